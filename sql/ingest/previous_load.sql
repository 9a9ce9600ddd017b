-- A file with the same content and kind that already reached the warehouse.
select file_id, path, ingested_at
from ingest_ledger
where sha256 = $sha256
  and kind = $kind
  and status = 'loaded'
order by file_id
limit 1
