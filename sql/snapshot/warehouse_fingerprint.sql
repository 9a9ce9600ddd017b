-- Changes whenever the loaded interactions, users or items change: the cache key of features and training.
select
    (select count(*) from interactions) as interactions,
    (select coalesce(sum(hash(user_id, item_id, ts, rating)), 0) from interactions) as interactions_hash,
    (select coalesce(sum(hash(user_id, age, gender, occupation, zip)), 0) from users) as users_hash,
    (select coalesce(sum(hash(item_id, title, release_date, genres)), 0) from items) as items_hash
