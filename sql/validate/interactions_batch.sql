-- One chunk of the staged interactions of one run (file $file_id, lines $first_line to $last_line), in line
-- order, with the derived columns the expectations look at. What it compares the batch with (known users and
-- items, users with history, rows that repeat a key) is prepared once a batch
-- (validate/gate_*, ingest/batch_duplicates).
with batch as (
    select *
    from staging_interactions
    where run_id = $run_id and file_id = $file_id and line_number between $first_line and $last_line
),

duplicates as (
    select line_number from batch_duplicates where file_id = $file_id
),

final as (
    select
        b.file_id,
        b.line_number,
        b.user_id,
        b.item_id,
        b.rating,
        epoch(b.ts)::double as ts_epoch,
        $all_users_known or b.user_id in (select user_id from gate_known_users) as user_known,
        $all_items_known or b.item_id in (select item_id from gate_known_items) as item_known,
        (b.line_number in (select line_number from duplicates))::integer as is_duplicate,
        (b.user_id not in (select user_id from gate_prior_users))::integer as is_new_user
    from batch as b
)

select * from final
order by line_number
