"""Dechunk kernels: EMA smoothing over chunks and upsampling to bytes (see api.py)."""

from hnet.kernels.dechunk.api import dechunk
from hnet.kernels.dechunk.reference import dechunk_reference, ema_scan_reference

__all__ = ["dechunk", "dechunk_reference", "ema_scan_reference"]
