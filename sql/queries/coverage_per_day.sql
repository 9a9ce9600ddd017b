-- Catalogue coverage of the published lists, per night.
with per_day as (
    select run_date, count(distinct item_id) as items_recommended, count(distinct user_id) as users_served
    from recommendations
    group by run_date
),

final as (
    select * from per_day
)

select * from final
order by run_date
