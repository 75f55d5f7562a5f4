"""Backend selection: which array namespace ``xp`` the work runs on.

Nothing here imports CuPy at module import time; :func:`get_xp` does so only when
the GPU backend is chosen, in the process that will use it.
"""

from engine.backends.detect import BackendStatus, detect, resolve_backend
from engine.backends.namespace import asnumpy, get_xp, to_device

__all__ = ["BackendStatus", "asnumpy", "detect", "get_xp", "resolve_backend", "to_device"]
