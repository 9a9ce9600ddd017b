-- The newest night's new items and their audiences.
create or replace view latest_new_items as
select * from latest_published('new_items')
