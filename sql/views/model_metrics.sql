create or replace view model_metrics as
select *
from read_parquet(getvariable('recsys_output') || '/metrics/run_date=*/*.parquet', hive_partitioning = true)
