-- What this batch lost before and at the gate: rejected rows by kind of reason (the text before the
-- quoted bad value), most frequent first.
with rejected as (
    select coalesce(nullif(regexp_extract(reason, '^(.*?): "', 1), ''), split_part(reason, ':', 1)) as reason_kind
    from rejects
    where run_id = $run_id
),

final as (
    select reason_kind, count(*) as n
    from rejected
    group by reason_kind
)

select * from final
order by n desc, reason_kind
