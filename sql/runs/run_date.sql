-- The night a run is for (null for runs that are not nightly).
select run_date
from runs
where run_id = $run_id
