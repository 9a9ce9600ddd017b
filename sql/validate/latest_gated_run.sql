-- The newest run with a batch waiting in staging or held back by the gate.
select run_id
from ingest_ledger
where status in ('staged', 'held')
order by ingested_at desc, file_id desc
limit 1
