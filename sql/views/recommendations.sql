-- Every published night of top-N lists (needs published.sql).
create or replace view recommendations as
select * from published('recommendations')
