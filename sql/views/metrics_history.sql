-- The published model's headline metrics over every published night (needs published.sql): nDCG@K for warm
-- users and for new users by known interactions (k_shot), items -> users nDCG on new items, and the paired
-- lifts over the baselines, each with its 95% CI. The published model of a night is the one its
-- segment_defaults were published for (a table of a few rows per night). Nights the publish gate held back
-- are not here (their lists were never published); the nightly report marks them, with the gate's reason.
create or replace view metrics_history as
with served as (
    select distinct run_date, model
    from published('segment_defaults')
),

final as (
    select m.run_date, m.run_id, m.model, m.split, m.k_shot, m.metric, m.k, m.value, m.ci_low, m.ci_high, m.n_users
    from published('metrics') as m
    inner join served on served.run_date = m.run_date and served.model = m.model
    where m.metric in ('ndcg', 'item_ndcg') or m.metric like '%ndcg_lift%'
)

select * from final
order by run_date, split, k_shot, metric, k
