-- Every row that did not reach a final table, with why. stage: 'parse' (ingest) or 'validation' (gate).
create table if not exists rejects (
    run_id      varchar not null,
    file_id     bigint,
    path        varchar not null,
    kind        varchar not null,
    line_number bigint,
    raw         varchar,
    reason      varchar not null,
    stage       varchar not null,
    rejected_at timestamp not null default current_timestamp
)
