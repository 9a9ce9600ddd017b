-- The latest night's new items: how many interactions each has, how many users it is published for, and
-- its best user with the reason.
with best as (
    select item_id, title, interactions, user_id as best_user, score as best_score, reason as best_reason
    from latest_new_items
    where rank = 1
),

audience as (
    select item_id, count(*) as users_listed
    from latest_new_items
    group by item_id
),

final as (
    select best.*, audience.users_listed
    from best
    join audience using (item_id)
)

select * from final
order by interactions, item_id
