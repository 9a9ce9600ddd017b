-- Runs still marked running while no process holds the run lock: their process died (kill, crash, reboot).
update runs
set status = 'failed',
    finished_at = current_timestamp,
    message = $message
where status = 'running'
  and run_id <> $run_id
returning run_id, flow, started_at
