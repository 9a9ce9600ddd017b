-- Every pipeline run, with the seed and parameters it used (determinism is recorded, not assumed).
create table if not exists runs (
    run_id      varchar primary key,
    flow        varchar not null,
    run_date    date,
    seed        integer,
    params      json,
    status      varchar not null,
    started_at  timestamp not null default current_timestamp,
    finished_at timestamp
)
