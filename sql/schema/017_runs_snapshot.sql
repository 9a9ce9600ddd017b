-- The snapshot (the warehouse's content fingerprint) a night read: which data it used, and which snapshot
-- and feature folders the nights that are kept still need (tasks/retention.py).
alter table runs add column if not exists snapshot varchar
