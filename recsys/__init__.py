"""recsys-nightly: the nightly batch recommender pipeline (core: settings, schema, warehouse access, CLI)."""

__version__ = "0.1.0"
