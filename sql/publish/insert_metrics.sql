insert into metrics
select run_id, split, k_shot, model, metric, k, value, ci_low, ci_high, n_users, n_excluded
from metrics_frame
