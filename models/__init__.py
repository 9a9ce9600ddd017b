"""Recommenders behind one contract (``models.base.Recommender``)."""
