"""Preprocessing benchmarks: each generates its inputs and measures a baseline in the same run."""
