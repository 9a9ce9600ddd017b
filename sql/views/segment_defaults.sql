-- Default lists for sign-ups who are not in the users table yet, per (gender, age bucket).
create or replace view segment_defaults as
select * from published('segment_defaults')
