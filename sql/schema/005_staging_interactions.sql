-- Parsed rows wait here until the validation gate lets their batch through.
create table if not exists staging_interactions (
    run_id      varchar not null,
    file_id     bigint not null,
    line_number bigint not null,
    raw         varchar,
    user_id     bigint not null,
    item_id     bigint not null,
    rating      double,
    ts          timestamp not null
)
