"""Benchmarks of the scoring engine; each script writes JSON to ``bench/results/``.

* ``python -m bench.score_bench``: engine vs the pyarrow I/O floor vs pandas + scikit-learn.
* ``python -m bench.scaling``: engine peak RSS and wall time at two dataset sizes.
* ``python -m bench.layouts``: engine score under alternative Dask layouts and partition sizes.
"""
