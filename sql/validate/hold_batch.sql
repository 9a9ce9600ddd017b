update ingest_ledger
set rows_held = rows_accepted, rows_accepted = 0, status = 'held',
    message = $message
where run_id = $run_id and status = 'staged'
