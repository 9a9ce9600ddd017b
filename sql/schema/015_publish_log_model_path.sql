-- The saved model a night published (its folder): the next night's tuning starts from its blend.
alter table publish_log add column if not exists model_path varchar
