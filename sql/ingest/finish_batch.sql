update ingest_ledger
set status = 'loaded'
where run_id = $run_id
  and status = 'staged'
