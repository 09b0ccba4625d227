"""Readers for public workload traces and synthetic generators; each returns a ``kfabric.sim.Workload``."""
