-- The night's interactions, ordered so that every later step reads the same rows in the same order.
with final as (
    select user_id, item_id, coalesce(rating, 1.0) as rating, ts
    from interactions
)

select * from final
order by user_id, ts, item_id
