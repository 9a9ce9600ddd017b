-- The newest published version of every night of one dataset under the output root
-- (hive partitions <dataset>/run_date=YYYY-MM-DD/version=<stamp>/data.parquet). Versions are immutable
-- and appear atomically, so a query never mixes two versions of a night. Set the root first:
--   set variable recsys_output = 'var/output';
create or replace macro published(dataset) as table
with files as (
    -- One scan: the newest version is chosen among the files this very scan saw, so a version that
    -- appears mid-query can never leave a night empty or mixed. (A max() window would be rewritten by
    -- the optimizer into a self-join, i.e. two directory listings that can disagree; rank cannot.)
    select *
    from read_parquet(getvariable('recsys_output') || '/' || dataset || '/run_date=*/version=*/data.parquet',
                      hive_partitioning = true, hive_types = {'run_date': date, 'version': varchar})
),

final as (
    select * exclude (version)
    from files
    qualify dense_rank() over (partition by run_date order by version desc) = 1
)

select * from final
