with final as (
    select
        file_id,
        line_number,
        item_id,
        title,
        year(release_date)::double as release_year,
        len(genres)::integer as n_genres
    from staging_items
    where run_id = $run_id
)

select * from final
order by file_id, line_number
