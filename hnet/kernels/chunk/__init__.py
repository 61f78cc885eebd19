"""Chunk kernels: order-preserving gather with static capacity (see api.py)."""

from hnet.kernels.chunk.api import chunk
from hnet.kernels.chunk.reference import Chunked, chunk_indices, chunk_reference

__all__ = ["Chunked", "chunk", "chunk_indices", "chunk_reference"]
