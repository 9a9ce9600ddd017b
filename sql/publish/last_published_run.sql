-- The night of the newest successful publish by another run: its metrics are the regression baseline.
select run_date
from publish_log
where status = 'published' and run_id <> $run_id
order by published_at desc
limit 1
