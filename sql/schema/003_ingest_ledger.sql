-- One row per landed file version. Identity: rows_read = rows_accepted + rows_rejected + rows_duplicate + rows_held.
create table if not exists ingest_ledger (
    file_id        bigint primary key,
    run_id         varchar not null,
    source         varchar not null,
    kind           varchar not null,
    path           varchar not null,
    sha256         varchar not null,
    size_bytes     bigint not null,
    version        integer not null,
    rows_read      bigint not null default 0,
    rows_accepted  bigint not null default 0,
    rows_rejected  bigint not null default 0,
    rows_duplicate bigint not null default 0,
    rows_held      bigint not null default 0,
    status         varchar not null,
    message        varchar,
    ingested_at    timestamp not null default current_timestamp
)
