"""Pipeline steps as plain, typed functions. Prefect only wraps them (see ``flows/``)."""
