-- The batch's rows that repeat a (user, item, ts) key: a later copy of a key within the batch (file and line
-- order), or a key already loaded. Narrow (the row's place alone) and, in a clean batch, short. Made by the gate,
-- which judges the share of duplicates (and again after it moved rows to rejects), and read by the promotion.
create or replace temp table batch_duplicates as
with batch as (
    select file_id, line_number, user_id, item_id, ts
    from staging_interactions
    where run_id = $run_id
),

later_copies as (
    select file_id, line_number
    from batch
    qualify row_number() over (partition by user_id, item_id, ts order by file_id, line_number) > 1
),

loaded as (
    select b.file_id, b.line_number
    from batch as b
    semi join batch_loaded_keys($run_id) as l on b.user_id = l.user_id and b.item_id = l.item_id and b.ts = l.ts
),

final as (
    select * from later_copies
    union
    select * from loaded
)

select * from final
