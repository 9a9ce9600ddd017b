-- One row per rejected line (a line with missing columns is reported once per missing column by DuckDB).
create or replace temp table structural_rejects as
with errors as (
    select line, csv_line, column_idx, error_type, error_message
    from raw_reject_errors
),

final as (
    select
        line as line_number,
        any_value(csv_line) as raw,
        'malformed row, ' || string_agg(distinct lower(error_type), ', ') || ': '
            || arg_min(error_message, column_idx)
            || ' (fix the row, or the delimiter/quote/encoding settings of the file)' as reason
    from errors
    group by line
)

select * from final
