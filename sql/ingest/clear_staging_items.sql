delete from staging_items where run_id = $run_id
