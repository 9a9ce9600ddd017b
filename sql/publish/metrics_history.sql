-- The published model's headline metrics on the last $nights nights evaluated before run $run_id, with what
-- became of each: published, held back by the publish gate (with the gate's reason), or failed. The
-- report's "nights over time".
with nights as (
    select run_id, run_date, started_at, status
    from runs
    where flow = 'train-and-publish' and run_id <> $run_id
),

outcomes as (
    select run_id, arg_max(status, published_at) as status, arg_max(reason, published_at) as reason
    from publish_log
    group by run_id
),

evaluated as (
    select nights.*
    from nights
    where exists (select 1 from metrics where metrics.run_id = nights.run_id)
    qualify row_number() over (order by started_at desc) <= $nights
),

final as (
    select
        e.run_id,
        e.run_date,
        e.started_at,
        coalesce(o.status, e.status) as outcome,
        o.reason,
        m.model,
        m.split,
        m.k_shot,
        m.metric,
        m.k,
        m.value,
        m.ci_low,
        m.ci_high
    from evaluated e
    join metrics m on m.run_id = e.run_id
    left join outcomes o on o.run_id = e.run_id
    where m.model = $model and (m.metric in ('ndcg', 'item_ndcg') or m.metric like '%ndcg_lift%')
)

select * from final
order by started_at, split, k_shot, metric, k
