create table if not exists staging_users (
    run_id      varchar not null,
    file_id     bigint not null,
    line_number bigint not null,
    raw         varchar,
    user_id     bigint not null,
    age         integer,
    gender      varchar,
    occupation  varchar,
    zip         varchar
)
