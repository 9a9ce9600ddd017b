"""Prefect flows: wiring only, each reads like a table of contents."""
