-- The newest published night of one dataset, in one scan (needs published.sql; rank, not max(): see there).
create or replace macro latest_published(dataset) as table
with final as (
    select *
    from published(dataset)
    qualify dense_rank() over (order by run_date desc) = 1
)

select * from final
