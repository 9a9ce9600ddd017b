update runs
set snapshot = $snapshot
where run_id = $run_id
