-- For sources without a users file: every user seen in the batch gets a row without demographics.
insert into users (user_id, run_id)
select distinct user_id, $run_id
from plan_interactions
where not is_duplicate
  and user_id not in (select user_id from users)
