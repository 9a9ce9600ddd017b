create sequence if not exists file_id_seq start 1
