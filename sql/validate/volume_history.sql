-- Rows that passed staging in each of the last loaded interaction batches (the trailing mean's input).
with loaded as (
    select run_id, sum(rows_accepted + rows_duplicate) as rows_in, max(ingested_at) as loaded_at
    from ingest_ledger
    where kind = 'interactions' and status = 'loaded' and run_id <> $run_id
    group by run_id
),

final as (
    select rows_in from loaded order by loaded_at desc limit $window
)

select avg(rows_in), count(*) from final
