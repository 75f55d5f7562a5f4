"""Runnable examples of the engine on real public customer data (see docs/reports.md).

Each example reads its data from an installed PyPI package (never a copy in this
repository), writes it as Parquet, trains, scores, and writes both reports::

    python -m examples.cdnow --workdir /tmp/cdnow
    python -m examples.telco --workdir /tmp/telco
"""
