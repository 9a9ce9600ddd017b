"""Recommenders behind one contract (``models.base.Recommender``)."""

from recsys.settings import quiet_libraries

quiet_libraries()  # before models.towers imports TensorFlow
