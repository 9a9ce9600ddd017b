-- A run that ended by an exception or an interrupt: failed, with why, when it ends (not at the next run).
update runs
set status = 'failed',
    finished_at = current_timestamp,
    message = $message
where run_id = $run_id
  and status = 'running'
