with final as (
    select file_id, line_number, user_id, age, gender, occupation, zip
    from staging_users
    where run_id = $run_id
)

select * from final
order by file_id, line_number
