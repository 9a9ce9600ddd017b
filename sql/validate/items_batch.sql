-- One chunk of the staged items of one run (file $file_id, lines $first_line to $last_line), in line order.
with final as (
    select
        file_id,
        line_number,
        item_id,
        title,
        year(release_date)::double as release_year,
        len(genres)::integer as n_genres
    from staging_items
    where run_id = $run_id and file_id = $file_id and line_number between $first_line and $last_line
)

select * from final
order by line_number
