"""Reproducible performance measurements (run by hand, never by the test suite)."""
