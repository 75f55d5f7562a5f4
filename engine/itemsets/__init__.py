"""Association rules over what customers hold: itemset supports as matrix products of 0/1 blocks.

- :mod:`engine.itemsets.count`: the counting arithmetic (dense blocks through ``xp``'s matrix
  product, BLAS on the CPU and cuBLAS on the GPU; sparse blocks through SciPy's compiled
  sparse product on the CPU), one level of candidate itemsets at a time.
- :mod:`engine.itemsets.mine`: frequent itemsets from summed counts, the next level's
  candidates, and rules with their metrics (pure NumPy on host values).
- :mod:`engine.itemsets.read`: a task's customers as a 0/1 matrix (wide or basket input).

The job that plans, runs the passes and publishes is :mod:`engine.jobs.rules`.
"""
