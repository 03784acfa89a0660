"""Drift engine and reports (issue #8)."""
