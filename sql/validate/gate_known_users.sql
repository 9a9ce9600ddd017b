-- Users an interaction of the batch may name: loaded, or staged in the same run (after the users' own gate).
create or replace temp table gate_known_users as
select user_id from users
union
select user_id from staging_users where run_id = $run_id
