-- Every publish attempt: what was published (or why not).
create table if not exists publish_log (
    run_id      varchar not null,
    run_date    date not null,
    model       varchar not null,
    status      varchar not null,
    reason      varchar,
    users       bigint,
    rows        bigint,
    path        varchar,
    published_at timestamp not null default current_timestamp
)
