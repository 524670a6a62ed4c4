"""Dagster resources: the database and the embedding models, as ConfigurableResources."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
from dagster import ConfigurableResource

from ..config import ModelConfig
from ..db.connection import connection, database_url
from ..providers import EmbeddingProvider, PostgresRateLimiter, build_provider


class PostgresResource(ConfigurableResource):
    """The application database. Unset: $DATABASE_URL, else the embedded server."""

    database_url: str | None = None

    def url(self) -> str:
        return self.database_url or database_url()

    @contextmanager
    def connect(self) -> Iterator[psycopg.Connection]:
        """An autocommit connection: every transaction in this project is explicit."""
        with connection(self.url(), autocommit=True) as conn:
            yield conn


# Per process, not per resource instance: Dagster re-initialises resources for every run,
# and loading a model takes seconds.
_PROVIDERS: dict[str, EmbeddingProvider] = {}
_PROVIDERS_LOCK = threading.Lock()


class EmbeddingModelsResource(ConfigurableResource):
    """Builds each configured model once per process and reuses it across steps."""

    def provider(self, model: ModelConfig, database_url: str | None = None) -> EmbeddingProvider:
        """The model's provider. With `database_url`, a hosted endpoint is paced through the
        database: its budgets and 429 pauses are shared by every run calling it."""
        # Local models ignore pacing: one instance per process whoever asks (loading one
        # takes seconds and memory).
        paced = database_url if model.provider == "openai" else None
        key = f"{model.model_dump_json()} {paced or ''}"
        with _PROVIDERS_LOCK:
            if key not in _PROVIDERS:
                limiter = None if paced is None else PostgresRateLimiter(paced, model)
                _PROVIDERS[key] = build_provider(model, limiter)
            return _PROVIDERS[key]
