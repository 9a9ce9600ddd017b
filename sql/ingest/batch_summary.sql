select file_id, kind, path, status, version, rows_read, rows_accepted, rows_rejected, rows_duplicate,
       rows_held, message
from ingest_ledger
where run_id = $run_id
order by file_id
