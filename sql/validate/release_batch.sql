-- A held batch that passes a later gate goes back to staged, ready for promotion.
update ingest_ledger
set rows_accepted = rows_accepted + rows_held, rows_held = 0, status = 'staged', message = null
where run_id = $run_id and status = 'held'
