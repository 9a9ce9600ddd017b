insert into staging_interactions
select $run_id, $file_id, line_number, raw, user_id, item_id, rating, ts
from parsed
where reason is null
