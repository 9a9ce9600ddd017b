delete from staging_items
where run_id in (select unnest($run_ids))
