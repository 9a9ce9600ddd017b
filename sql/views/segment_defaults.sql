-- Default lists for sign-ups who are not in the users table yet, per (gender, age bucket).
create or replace view segment_defaults as
select *
from read_parquet(getvariable('recsys_output') || '/segment_defaults/run_date=*/*.parquet', hive_partitioning = true)
