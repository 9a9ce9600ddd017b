with final as (
    select item_id, title, release_date, genres
    from items
)

select * from final
order by item_id
