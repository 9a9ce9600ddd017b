with final as (
    select user_id, age, gender, occupation, zip
    from users
)

select * from final
order by user_id
