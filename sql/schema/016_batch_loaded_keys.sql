-- The (user, item, ts) keys of a staged batch that are already loaded: a semi join that holds the batch's keys
-- and reads the warehouse once (an EXISTS against `interactions` held a hash table of the whole warehouse:
-- 4.13 GiB to check 100k new rows against 100 M loaded ones, 0.37 GiB this way). The batch's duplicates
-- (ingest/batch_duplicates), which the gate and the promotion read, are marked with it. A connection's own
-- (temp) macro: nothing is stored.
create or replace temp macro batch_loaded_keys(batch_run_id) as table
select distinct
    i.user_id,
    i.item_id,
    i.ts
from interactions as i
semi join (select user_id, item_id, ts from staging_interactions where run_id = batch_run_id) as b
    on i.user_id = b.user_id and i.item_id = b.item_id and i.ts = b.ts
