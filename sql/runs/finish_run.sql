update runs
set status = $status, finished_at = current_timestamp
where run_id = $run_id
