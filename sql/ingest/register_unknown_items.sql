-- For sources without an items file: every item seen in the batch gets a row without content features.
insert into items (item_id, run_id)
select distinct item_id, $run_id
from plan_interactions
where not is_duplicate
  and item_id not in (select item_id from items)
