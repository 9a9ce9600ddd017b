create table if not exists users (
    user_id    bigint primary key,
    age        integer,
    gender     varchar,
    occupation varchar,
    zip        varchar,
    run_id     varchar not null,
    file_id    bigint
)
