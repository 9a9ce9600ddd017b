-- The newest night's lists with the reason for every item: the kind (neighbour, content, segment, popular),
-- the words, and the item or segment the reason names.
create or replace view explained_recommendations as
with final as (
    select user_id, rank, item_id, title, score, strategy, reason_kind, reason, reason_item_id, reason_segment, model
    from latest_recommendations
)

select * from final
