-- Deduplicated on (user_id, item_id, ts) by the promotion statement (no index: cheaper at 20 M rows).
create table if not exists interactions (
    user_id bigint not null,
    item_id bigint not null,
    rating  double,
    ts      timestamp not null,
    run_id  varchar not null,
    file_id bigint not null
)
