-- The newest committed version of every night of one dataset under the output root
-- (hive partitions <dataset>/run_date=YYYY-MM-DD/version=<stamp>/data.parquet). Versions are immutable,
-- and a version counts only once its commit marker _commits/run_date=<date>/version=<stamp> exists: the
-- marker is written after every table of the night is in place, so the night's tables appear together and
-- a query never mixes two versions of a night. A layout published before markers existed (no _commits
-- folder) counts every version. Set the root first:
--   set variable recsys_output = 'var/output';
create or replace macro published(dataset) as table
with files as (
    select *
    from read_parquet(getvariable('recsys_output') || '/' || dataset || '/run_date=*/version=*/data.parquet',
                      hive_partitioning = true, hive_types = {'run_date': date, 'version': varchar})
),

markers as (
    select file
    from glob(getvariable('recsys_output') || '/_commits/run_date=*/version=*')
),

committed as (
    select
        cast(regexp_extract(file, 'run_date=([0-9-]+)', 1) as date) as run_date,
        regexp_extract(file, 'version=([^/]+)$', 1) as version
    from markers
),

visible as (
    select files.*
    from files
    where (select count(*) from markers) = 0
       or exists (select 1 from committed c where c.run_date = files.run_date and c.version = files.version)
),

final as (
    -- One ranking over the files this scan saw (rank, not max(): a max() window would be rewritten by the
    -- optimizer into a self-join, i.e. two directory listings that can disagree; rank cannot).
    select * exclude (version)
    from visible
    qualify dense_rank() over (partition by run_date order by version desc) = 1
)

select * from final
