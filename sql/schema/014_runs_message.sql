-- Why a run ended as it did (a crash found by a later run, for example).
alter table runs add column if not exists message varchar
