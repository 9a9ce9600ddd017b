-- The evaluation metrics published with each night.
create or replace view model_metrics as
select * from published('metrics')
