insert into validation_results (run_id, suite, expectation, column_name, severity, success, observed_value,
                                unexpected_count, element_count, rows_rejected, details)
values ($run_id, $suite, $expectation, $column_name, $severity, $success, $observed_value,
        $unexpected_count, $element_count, $rows_rejected, $details)
