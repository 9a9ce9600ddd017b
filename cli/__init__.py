"""The ``recsys`` command line: the top layer, above flows, tasks, models and the core."""
