"""autodir: AutoDIR all-in-one image restoration.

`Client` talks to an `autodir broker` / `autodir serve` pool over ZeroMQ (docs/PROTOCOL.md).
The in-process `Engine` (ctypes over libautodir) lives in `autodir.engine` when present.
"""
from .client import Client, Error

__all__ = ["Client", "Error"]

try:  # the ctypes Engine is added separately; the client works without it
    from .engine import CancelToken, Engine, Progress, load_png, save_png  # noqa: F401
    __all__ += ["Engine", "CancelToken", "Progress", "load_png", "save_png"]
except ImportError:
    pass
