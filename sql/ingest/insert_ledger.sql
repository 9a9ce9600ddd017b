insert into ingest_ledger (
    file_id, run_id, source, kind, path, sha256, size_bytes, version,
    rows_read, rows_accepted, rows_rejected, rows_duplicate, rows_held, status, message
)
values (
    $file_id, $run_id, $source, $kind, $path, $sha256, $size_bytes, $version,
    $rows_read, $rows_accepted, $rows_rejected, 0, 0, $status, $message
)
