create table if not exists metrics (
    run_id     varchar not null,
    split      varchar not null,
    k_shot     integer,
    model      varchar not null,
    metric     varchar not null,
    k          integer not null,
    value      double,
    ci_low     double,
    ci_high    double,
    n_users    bigint,
    n_excluded bigint
)
