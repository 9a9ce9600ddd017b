-- The newest successful publish by another run: its night (whose metrics are the regression baseline), and the
-- model it published (whose blend the next night's tuning keeps unless beaten).
select run_date, model, model_path
from publish_log
where status = 'published' and run_id <> $run_id
order by published_at desc
limit 1
