-- Users with loaded interactions: a batch's other users are new (the drift check's share).
create or replace temp table gate_prior_users as
select distinct user_id from interactions
