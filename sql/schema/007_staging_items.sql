create table if not exists staging_items (
    run_id       varchar not null,
    file_id      bigint not null,
    line_number  bigint not null,
    raw          varchar,
    item_id      bigint not null,
    title        varchar,
    release_date date,
    genres       varchar[]
)
