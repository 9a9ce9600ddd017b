-- One user's latest top-10 and why each item is on it (bind $user_id).
with final as (
    select rank, item_id, title, reason_kind, reason, reason_item_id, strategy
    from explained_recommendations
    where user_id = $user_id and rank <= 10
)

select * from final
order by rank
