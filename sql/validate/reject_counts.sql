select file_id, count(*) from failing_rows group by file_id
