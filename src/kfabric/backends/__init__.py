"""Backends: adapters that realize the core's decisions on real or simulated clusters (product.md §9)."""
