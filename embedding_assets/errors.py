"""Errors a user can act on.

Every error names the problem and the fix in its message; they are raised before anything
is written, so catching one means the database was left as it was.
"""


class EmbeddingBackfillError(Exception):
    """Base class: a problem the operator must fix; the message says how."""


class ConfigError(EmbeddingBackfillError):
    """The YAML configuration is missing, malformed or inconsistent."""


class DatabaseError(EmbeddingBackfillError):
    """The database cannot serve this space (missing pgvector, table, column, wrong key type)."""


class SpaceConflictError(EmbeddingBackfillError):
    """The target column or registry entry belongs to another vector space."""


class ProviderError(EmbeddingBackfillError):
    """The embedding provider is unreachable, misconfigured or returned unusable vectors."""


class DimensionMismatchError(ProviderError):
    """The provider returned vectors whose dimension differs from the configured one."""

    def __init__(self, message: str, *, returned: int, configured: int) -> None:
        super().__init__(message)
        self.returned = returned
        self.configured = configured


class EndpointUnavailableError(ProviderError):
    """The endpoint stayed unreachable, overloaded or rate-limited through every retry.

    Transient by nature: the Dagster step is retried later, with exponential backoff.
    """
