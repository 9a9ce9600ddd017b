"""recsys-nightly: the nightly batch recommender pipeline. This package is the core layer: settings, schema,
warehouse access, errors, runs and progress (the command line is ``cli/``)."""

__version__ = "0.1.0"
