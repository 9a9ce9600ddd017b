select count(*) > 0 from interactions
