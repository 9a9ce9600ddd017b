-- Where the accepted rows' line numbers step over rejected lines. An accepted row's line is $first_line + its
-- ordinal (its place among the accepted rows, in file order) + the rejected lines before it; the accepted rows
-- from ordinal `from_ordinal` on have `skipped` rejected lines before them. One row per run of consecutive
-- rejected lines, so numbering the accepted rows is an ASOF join to this, not a table as long as the file.
create or replace temp table line_steps as
with rejected as (
    select
        line_number,
        row_number() over (order by line_number) as skipped
    from structural_rejects
),

final as (
    select
        line_number - $first_line - (skipped - 1) as from_ordinal,
        max(skipped) as skipped
    from rejected
    group by all
)

select * from final
