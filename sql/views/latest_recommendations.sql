create or replace view latest_recommendations as
with latest as (
    select max(run_date) as run_date from recommendations
),

final as (
    select r.*
    from recommendations as r
    join latest using (run_date)
)

select * from final
