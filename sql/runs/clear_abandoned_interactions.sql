delete from staging_interactions
where run_id in (select unnest($run_ids))
