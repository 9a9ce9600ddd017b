insert into staging_items
select $run_id, $file_id, line_number, raw, item_id, title, release_date, genres
from parsed
where reason is null
