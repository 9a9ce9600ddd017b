-- Line numbers of the accepted rows: the data lines that were not rejected, in file order.
create or replace temp table line_map as
with data_lines as (
    select range as line_number
    from range($first_line, $first_line + $n_lines)
),

accepted_lines as (
    select line_number
    from data_lines
    where line_number not in (select line_number from structural_rejects)
),

final as (
    select
        row_number() over (order by line_number) - 1 as ordinal,
        line_number
    from accepted_lines
)

select * from final
