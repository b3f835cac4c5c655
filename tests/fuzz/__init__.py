"""Fuzz suites: malformed inputs driven through the real command line (bounded examples)."""
