-- One chunk of the staged users of one run (file $file_id, lines $first_line to $last_line), in line order.
with final as (
    select file_id, line_number, user_id, age, gender, occupation, zip
    from staging_users
    where run_id = $run_id and file_id = $file_id and line_number between $first_line and $last_line
)

select * from final
order by line_number
