create or replace temp table raw_file as
select *
from read_parquet($path, file_row_number = true)
