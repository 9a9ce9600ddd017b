-- nDCG@10 against the number of known interactions of held-out cold users, per model and night.
create or replace view cold_start_curve as
with cold as (
    select run_date, run_id, model, k_shot, value, ci_low, ci_high, n_users
    from model_metrics
    where split = 'cold' and metric = 'ndcg' and k = 10
),

final as (
    select * from cold
)

select * from final
order by run_date, model, k_shot
