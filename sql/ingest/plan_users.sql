-- The last row per user in the batch wins; a row identical to what is loaded already is a duplicate.
create or replace temp table plan_users as
with batch as (
    select
        *,
        row_number() over (partition by user_id order by file_id desc, line_number desc) as recency
    from staging_users
    where run_id = $run_id
),

final as (
    select
        b.*,
        b.recency > 1 or exists (
            select 1 from users u
            where u.user_id = b.user_id
              and u.age is not distinct from b.age
              and u.gender is not distinct from b.gender
              and u.occupation is not distinct from b.occupation
              and u.zip is not distinct from b.zip
        ) as is_duplicate
    from batch as b
)

select * from final
