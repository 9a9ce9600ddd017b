-- Items an interaction of the batch may name: loaded, or staged in the same run (after the items' own gate).
create or replace temp table gate_known_items as
select item_id from items
union
select item_id from staging_items where run_id = $run_id
