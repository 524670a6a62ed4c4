"""Hooks for tools that manage the same database as this project (e.g. alembic)."""
