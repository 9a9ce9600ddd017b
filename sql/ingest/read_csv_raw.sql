-- The file's rows, every column as text, so that nothing is lost to type sniffing; structurally broken rows
-- (wrong column count, bad encoding) go to the temporary reject tables with their line and raw text. The
-- ingest types these rows in the same statement that reads them (tasks/ingest.py `_parse`): no table of the
-- file's text is kept, and the rows keep the file's order.
select *
from read_csv(
    $path,
    header = $header,
    delim = $delimiter,
    quote = $quote,
    escape = $quote,
    encoding = $encoding,
    columns = $columns,
    auto_detect = false,
    store_rejects = true,
    rejects_table = 'raw_reject_errors',
    rejects_scan = 'raw_reject_scans'
)
