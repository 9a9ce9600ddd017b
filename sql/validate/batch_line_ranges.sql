-- Each file of a run's staged rows (of one kind) and its first and last staged line: the gate reads a batch in
-- chunks of lines, file by file.
select
    file_id,
    min(line_number) as first_line,
    max(line_number) as last_line
from query_table($staging_table)
where run_id = $run_id
group by file_id
order by file_id
