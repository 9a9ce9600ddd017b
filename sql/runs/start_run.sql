insert or replace into runs (run_id, flow, run_date, seed, params, status)
values ($run_id, $flow, $run_date, $seed, $params, 'running')
