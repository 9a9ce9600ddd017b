delete from metrics where run_id = $run_id
