-- The staged interactions of one run, with the derived columns the expectations look at.
with batch as (
    select * from staging_interactions where run_id = $run_id
),

known_users as (
    select user_id from users
    union
    select user_id from staging_users where run_id = $run_id
),

known_items as (
    select item_id from items
    union
    select item_id from staging_items where run_id = $run_id
),

prior_users as (
    select distinct user_id from interactions
),

final as (
    select
        b.file_id,
        b.line_number,
        b.user_id,
        b.item_id,
        b.rating,
        epoch(b.ts)::double as ts_epoch,
        $all_users_known or b.user_id in (select user_id from known_users) as user_known,
        $all_items_known or b.item_id in (select item_id from known_items) as item_known,
        (
            row_number() over (partition by b.user_id, b.item_id, b.ts order by b.file_id, b.line_number) > 1
            or l.user_id is not null
        )::integer as is_duplicate,
        (b.user_id not in (select user_id from prior_users))::integer as is_new_user
    from batch as b
    left join batch_loaded_keys($run_id) as l on b.user_id = l.user_id and b.item_id = l.item_id and b.ts = l.ts
)

select * from final
order by file_id, line_number
