select suite, expectation, column_name, severity, success, observed_value, unexpected_count, rows_rejected
from validation_results
where run_id = $run_id
order by validated_at, suite
