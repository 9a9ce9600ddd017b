insert into publish_log (run_id, run_date, model, status, reason, users, rows, path, model_path)
values ($run_id, $run_date, $model, $status, $reason, $users, $rows, $path, $model_path)
