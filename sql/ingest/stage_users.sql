insert into staging_users
select $run_id, $file_id, line_number, raw, user_id, age, gender, occupation, zip
from parsed
where reason is null
