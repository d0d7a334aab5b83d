"""Benchmarks: each compares one of our paths with a bare baseline in the same run
(see docs/benchmarks.md)."""
