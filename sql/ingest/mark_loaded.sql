update ingest_ledger
set rows_duplicate = rows_duplicate + $duplicates,
    rows_accepted = rows_accepted - $duplicates,
    status = 'loaded'
where file_id = $file_id
