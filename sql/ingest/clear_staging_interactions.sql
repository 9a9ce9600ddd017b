delete from staging_interactions where run_id = $run_id
