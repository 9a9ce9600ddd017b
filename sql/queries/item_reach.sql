-- How many users each item reaches in the latest top-N, most reached first.
with reach as (
    select item_id, count(*) as users_reached, min(rank) as best_rank
    from latest_recommendations
    group by item_id
),

final as (
    select * from reach
)

select * from final
order by users_reached desc, item_id
