create table if not exists items (
    item_id      bigint primary key,
    title        varchar,
    release_date date,
    genres       varchar[],
    run_id       varchar not null,
    file_id      bigint
)
