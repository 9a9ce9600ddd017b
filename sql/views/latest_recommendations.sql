-- The newest night's top-N lists.
create or replace view latest_recommendations as
select * from latest_published('recommendations')
