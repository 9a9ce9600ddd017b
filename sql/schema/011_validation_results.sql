create table if not exists validation_results (
    run_id           varchar not null,
    suite            varchar not null,
    expectation      varchar not null,
    column_name      varchar,
    severity         varchar not null,
    success          boolean not null,
    observed_value   varchar,
    unexpected_count bigint,
    element_count    bigint,
    rows_rejected    bigint not null default 0,
    details          varchar,
    validated_at     timestamp not null default current_timestamp
)
