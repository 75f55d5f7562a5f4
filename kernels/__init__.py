"""CUDA kernels of the scoring engine, each paired with a NumPy/CuPy twin.

Every kernel lives in ``kernels/<name>.cu`` (complete ``extern "C"`` source, checkable
by ``nvcc`` and NVRTC without a GPU) next to ``kernels/<name>.py``, which holds the
array-namespace twin (``name(..., *, xp)``) and the CUDA entry point
(``name_cuda(...)``) with the same signature minus ``xp``.

Importing this package, or any module in it, never imports CuPy or touches CUDA:
kernels are compiled lazily on first use, once per device (see ``_loader``).
"""
