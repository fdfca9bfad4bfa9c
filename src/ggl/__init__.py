"""Generative Gradient Leakage: audit federated-learning defences against gradient inversion."""

__version__ = "0.1.0"
