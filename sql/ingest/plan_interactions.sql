-- Which staged interactions are new: the first copy of (user, item, ts) in the batch, not yet loaded.
create or replace temp table plan_interactions as
with batch as (
    select
        *,
        row_number() over (partition by user_id, item_id, ts order by file_id, line_number) as copy_no
    from staging_interactions
    where run_id = $run_id
),

final as (
    select
        b.*,
        b.copy_no > 1 or exists (
            select 1 from interactions i
            where i.user_id = b.user_id and i.item_id = b.item_id and i.ts = b.ts
        ) as is_duplicate
    from batch as b
)

select * from final
