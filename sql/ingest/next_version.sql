select coalesce(max(version), 0) + 1
from ingest_ledger
where path = $path
  and kind = $kind
  and status not in ('failed')
