insert into rejects (run_id, file_id, path, kind, line_number, raw, reason, stage)
with structural as (
    select line_number, raw, reason from structural_rejects
),

typed as (
    select line_number, raw, reason from parsed where reason is not null
),

final as (
    select * from structural
    union all
    select * from typed
)

select $run_id, $file_id, $path, $kind, line_number, raw, reason, 'parse'
from final
order by line_number
