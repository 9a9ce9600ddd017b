-- The latest top-10 for one user (bind $user_id).
with final as (
    select user_id, rank, item_id, score, strategy, model
    from latest_recommendations
    where user_id = $user_id and rank <= 10
)

select * from final
order by rank
