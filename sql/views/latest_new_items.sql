-- The newest night's new items and their audiences.
create or replace view latest_new_items as
with latest as (
    select max(run_date) as run_date from new_items
),

final as (
    select n.*
    from new_items as n
    join latest using (run_date)
)

select * from final
