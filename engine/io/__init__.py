"""Parquet in and out: discovery, planning reads, the output commit protocol."""
