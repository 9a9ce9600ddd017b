-- Which staged interactions are new: not one of the batch's duplicates (ingest/batch_duplicates: a later copy
-- of a (user, item, ts) key in the batch, or a key already loaded). Only the columns promotion reads (not each
-- row's raw text and line: 4.7 -> 3.4 s for 20 M rows).
create or replace temp table plan_interactions as
with batch as (
    select run_id, file_id, line_number, user_id, item_id, rating, ts
    from staging_interactions
    where run_id = $run_id
),

final as (
    select
        b.run_id,
        b.file_id,
        b.user_id,
        b.item_id,
        b.rating,
        b.ts,
        d.file_id is not null as is_duplicate
    from batch as b
    left join batch_duplicates as d on b.file_id = d.file_id and b.line_number = d.line_number
)

select * from final
