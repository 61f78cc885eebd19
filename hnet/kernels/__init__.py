"""Kernels of the H-Net chunk-routing core: routing, chunk, dechunk (see each api.py)."""
