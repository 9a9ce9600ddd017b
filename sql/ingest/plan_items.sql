-- The last row per item in the batch wins; a row identical to what is loaded already is a duplicate.
create or replace temp table plan_items as
with batch as (
    select
        *,
        row_number() over (partition by item_id order by file_id desc, line_number desc) as recency
    from staging_items
    where run_id = $run_id
),

final as (
    select
        b.*,
        b.recency > 1 or exists (
            select 1 from items i
            where i.item_id = b.item_id
              and i.title is not distinct from b.title
              and i.release_date is not distinct from b.release_date
              and i.genres is not distinct from b.genres
        ) as is_duplicate
    from batch as b
)

select * from final
