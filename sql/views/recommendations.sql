-- Every published night (hive partitions run_date=YYYY-MM-DD). Set the root first:
--   set variable recsys_output = 'var/output';
create or replace view recommendations as
select *
from read_parquet(getvariable('recsys_output') || '/recommendations/run_date=*/*.parquet', hive_partitioning = true)
