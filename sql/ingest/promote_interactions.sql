insert into interactions
select user_id, item_id, rating, ts, run_id, file_id
from plan_interactions
where not is_duplicate
order by ts, user_id, item_id
