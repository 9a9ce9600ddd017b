insert or replace into items
select item_id, title, release_date, genres, run_id, file_id
from plan_items
where not is_duplicate
