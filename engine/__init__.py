"""Batch scoring engine for customer data: K-means segments and logistic propensity.

Importing this package touches no GPU library: CuPy, cuML and dask-cuda are imported
lazily inside :mod:`engine.backends`, so that dask-cuda can still place one worker per GPU.
"""

__version__ = "0.1.0"
