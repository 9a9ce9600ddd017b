select file_id, count(*) filter (where is_duplicate) as duplicates
from query_table($plan_table)
group by file_id
