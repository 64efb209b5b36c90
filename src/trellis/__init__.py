"""Trellis: the whole life of a language model, from pretraining to serving."""

__version__ = "0.1.0"
