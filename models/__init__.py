"""Recommenders behind one contract (``models.base.Recommender``)."""

from recsys.settings import quiet_libraries

quiet_libraries()  # before models.two_tower imports TensorFlow
