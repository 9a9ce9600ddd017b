-- The published model's nDCG per night, one row a night: warm users, new users with no history and with 5
-- known interactions, and who to show new items to (items -> users nDCG@100), with the 95% CI half-widths.
with picked as (
    select
        run_date,
        model,
        case
            when split = 'warm' and metric = 'ndcg' then 'warm'
            when split = 'cold' and metric = 'ndcg' and k_shot = 0 then 'new_users'
            when split = 'cold' and metric = 'ndcg' and k_shot = 5 then 'new_users_k5'
            when split = 'item_cold' and metric = 'item_ndcg' then 'new_items'
        end as slice,
        value,
        greatest(value - ci_low, ci_high - value) as ci
    from metrics_history
    where (metric = 'ndcg' and k = 10) or (metric = 'item_ndcg' and k = 100)
),

final as (
    select
        run_date,
        any_value(model) as model,
        max(value) filter (where slice = 'warm') as warm,
        max(ci) filter (where slice = 'warm') as warm_ci,
        max(value) filter (where slice = 'new_users') as new_users,
        max(ci) filter (where slice = 'new_users') as new_users_ci,
        max(value) filter (where slice = 'new_users_k5') as new_users_k5,
        max(value) filter (where slice = 'new_items') as new_items,
        max(ci) filter (where slice = 'new_items') as new_items_ci
    from picked
    where slice is not null
    group by run_date
)

select * from final
order by run_date
