insert or replace into users
select user_id, age, gender, occupation, zip, run_id, file_id
from plan_users
where not is_duplicate
