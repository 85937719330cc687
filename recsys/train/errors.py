"""Errors of training a user can act on (kept free of torch, so the command line can name them cheaply)."""

from __future__ import annotations


class DeviceUnavailable(RuntimeError):
    """The requested device does not exist on this machine (e.g. device 'cuda' without a CUDA GPU)."""
