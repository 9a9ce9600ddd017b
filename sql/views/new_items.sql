-- Every published night of new items (fewer than RECSYS_NEW_ITEM_MAX_INTERACTIONS interactions) with the
-- users to show each one to, best first, and why (needs published.sql).
create or replace view new_items as
select * from published('new_items')
