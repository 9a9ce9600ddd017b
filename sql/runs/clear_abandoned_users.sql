delete from staging_users
where run_id in (select unnest($run_ids))
