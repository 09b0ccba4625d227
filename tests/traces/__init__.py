"""Tests of the trace readers and the synthetic national workload."""
