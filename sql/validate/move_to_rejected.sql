update ingest_ledger
set rows_accepted = rows_accepted - $n, rows_rejected = rows_rejected + $n
where file_id = $file_id
