-- Move the rows a row-level expectation failed from staging to rejects (the caller deletes them after).
insert into rejects (run_id, file_id, path, kind, line_number, raw, reason, stage)
select s.run_id, s.file_id, l.path, $kind, s.line_number, s.raw, f.reason, 'validation'
from query_table($staging_table) as s
join failing_rows as f using (file_id, line_number)
join ingest_ledger as l using (file_id)
where s.run_id = $run_id
