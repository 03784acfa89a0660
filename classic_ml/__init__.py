"""Classic tabular models (planned in issue #8)."""
