-- The users to show one new item to, best first, with the reason for each (bind $item_id).
with final as (
    select rank, user_id, score, reason_kind, reason, reason_item_id
    from latest_new_items
    where item_id = $item_id
)

select * from final
order by rank
