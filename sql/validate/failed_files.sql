select count(*)
from ingest_ledger
where run_id = $run_id
  and status = 'failed'
