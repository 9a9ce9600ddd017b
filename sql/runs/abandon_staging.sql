-- A batch staged by a run that died never reached the gate: its files are marked abandoned (a later ingest
-- of the same files stages them again) and its staging rows are cleared below.
update ingest_ledger
set status = 'abandoned',
    message = $message
where status = 'staged'
  and run_id in (select unnest($run_ids))
returning file_id, path, rows_accepted
