"""Benchmark suite for spoolq and its peers.

Run ``python -m measurements`` (or ``python -m measurements --quick``) from the
repository root; see ``measurements/README.md``.
"""
