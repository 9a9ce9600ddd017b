delete from staging_users where run_id = $run_id
