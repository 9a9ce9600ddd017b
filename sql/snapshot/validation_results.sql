-- The newest gated batch's results, for the report (Data Docs need a CDN; the report must not).
with newest as (
    select run_id
    from validation_results
    order by validated_at desc
    limit 1
),

final as (
    select
        v.run_id, v.suite, v.expectation, v.column_name, v.severity, v.success, v.observed_value,
        v.unexpected_count, v.element_count, v.rows_rejected, v.details
    from validation_results as v
    join newest using (run_id)
)

select * from final
order by suite, expectation, column_name
