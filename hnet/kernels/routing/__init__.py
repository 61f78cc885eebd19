"""Routing kernels: boundary probabilities from cosine similarity (see api.py)."""

from hnet.kernels.routing.api import boundary_probs
from hnet.kernels.routing.reference import boundary_probs_reference

__all__ = ["boundary_probs", "boundary_probs_reference"]
