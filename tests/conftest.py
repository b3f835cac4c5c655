"""Shared test plugins: the throwaway PostgreSQL server fixtures live in tests/pg.py."""

pytest_plugins = ["tests.pg"]
