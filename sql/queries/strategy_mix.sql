-- How many users each serving strategy (warm, k_shot, zero_shot) covered in the latest night.
with final as (
    select strategy, count(distinct user_id) as users
    from latest_recommendations
    group by strategy
)

select * from final
order by strategy
