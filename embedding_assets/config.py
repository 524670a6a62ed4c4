"""The vector-space specification: `embedding_backfills.yaml`, validated on load.

One file describes every space to build. Validation happens once, here, so that every
later step can trust the spec; errors name the offending key and the fix.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

CONFIG_ENV = "EMBEDDING_BACKFILLS_CONFIG"
DEFAULT_CONFIG_NAME = "embedding_backfills.yaml"
PROJECT_ROOT = Path(__file__).resolve().parent.parent

_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# PostgreSQL truncates identifiers at 63 bytes; a longer name would silently alias another.
_MAX_IDENT = 63


def _check_identifier(value: str, what: str) -> str:
    if not value or len(value.encode()) > _MAX_IDENT or "\x00" in value:
        raise ValueError(f"{what} must be a non-empty PostgreSQL identifier of at most 63 bytes")
    return value


class _Strict(BaseModel):
    # Unknown keys are typos until proven otherwise: `partiton_size` must not be ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelConfig(_Strict):
    """Which model writes the space, and how to reach it."""

    provider: Literal["sentence-transformers", "openai", "hash"]
    name: str = Field(
        min_length=1, description="Model id, or a local path for sentence-transformers"
    )
    dimensions: int = Field(
        gt=0,
        le=16000,
        description="The model's output dimension (openai: what `dimensions=` asks for, if sent)",
    )
    truncate_dimensions: int | None = Field(
        default=None,
        gt=0,
        description=(
            "Store only the first k dimensions (Matryoshka truncation), re-normalised when "
            "`normalize`; must be below `dimensions`. Part of the space's identity"
        ),
    )
    truncation: Literal["matryoshka", "allow"] = Field(
        default="matryoshka",
        description=(
            "`matryoshka`: truncate_dimensions only on a model known to be Matryoshka-trained; "
            "`allow`: on any model (shadow validation shows what it costs)"
        ),
    )
    normalize: bool = True
    revision: str | None = Field(default=None, description="Model revision, when known")
    device: str = Field(default="cpu", description="sentence-transformers device: cpu, cuda, ...")
    max_input_tokens: int | None = Field(
        default=None, gt=0, description="Truncate longer inputs; defaults to the model's limit"
    )
    # openai provider
    base_url: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    send_dimensions: Literal["auto", "always", "never"] = "auto"
    timeout_seconds: float = Field(default=60.0, gt=0)
    max_retries: int = Field(default=6, ge=0)
    max_inputs_per_request: int = Field(default=2048, gt=0, le=2048)
    max_tokens_per_request: int = Field(default=300_000, gt=0)
    max_concurrent_requests: int = Field(
        default=8,
        gt=0,
        le=256,
        description="openai: requests one run keeps in flight; 1 sends them one at a time",
    )
    requests_per_minute: int | None = Field(
        default=None,
        gt=0,
        description="openai: request budget of the endpoint, shared by every run that uses it",
    )
    tokens_per_minute: int | None = Field(
        default=None,
        gt=0,
        description="openai: token budget of the endpoint, shared by every run that uses it",
    )
    mode: Literal["online", "batch"] = Field(
        default="online",
        description="openai: `batch` sends partitions through the Batch API (half the price)",
    )
    batch_poll_seconds: float = Field(
        default=30.0, gt=0, description="openai batch mode: seconds between status polls"
    )

    @field_validator("api_key_env")
    @classmethod
    def _env_name_not_key(cls, value: str) -> str:
        # A pasted key here would end up in logs and metadata; the spec holds only the name.
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value) or value.startswith("sk-"):
            raise ValueError(
                "api_key_env must be the NAME of an environment variable (e.g. OPENAI_API_KEY), "
                "never the key itself"
            )
        return value

    @model_validator(mode="after")
    def _truncation(self) -> ModelConfig:
        if self.truncate_dimensions is None:
            return self
        if self.truncate_dimensions >= self.dimensions:
            raise ValueError(
                f"truncate_dimensions ({self.truncate_dimensions}) must be below dimensions "
                f"({self.dimensions}, what the model returns); lower it, or remove it to store "
                "the full vectors"
            )
        # Imported here: the providers package imports this module.
        from .providers.matryoshka import is_matryoshka

        if self.truncation == "matryoshka" and not is_matryoshka(self.name):
            raise ValueError(
                f"model {self.name!r} is not known to be Matryoshka-trained, so its first "
                f"{self.truncate_dimensions} dimensions may not be a usable embedding; set "
                "`truncation: allow` to truncate it anyway, and use shadow validation "
                "(`shadow.compare_to` the full space) to see the recall lost"
            )
        return self

    @model_validator(mode="after")
    def _batch_needs_openai(self) -> ModelConfig:
        if self.mode == "batch" and self.provider != "openai":
            raise ValueError(
                "mode: batch uses the OpenAI Batch API and needs provider: openai; "
                "remove mode or set it to online"
            )
        return self

    @property
    def stored_dimensions(self) -> int:
        """The dimension of the stored vectors: what the column, checks and index use."""
        return self.truncate_dimensions or self.dimensions

    @property
    def dimensions_label(self) -> str:
        """`384d`, or `192d of 384d` for a truncated space (as ModelIdentity.label says)."""
        of = f" of {self.dimensions}d" if self.truncate_dimensions else ""
        return f"{self.stored_dimensions}d{of}"

    @property
    def endpoint(self) -> str:
        """Where requests go, as shared budgets name it: scheme, host and path, never the
        user:password a URL may carry."""
        parts = urlsplit(self.base_url or "https://api.openai.com/v1")
        return f"{parts.scheme}://{parts.hostname}{f':{parts.port}' if parts.port else ''}" + (
            parts.path.rstrip("/")
        )


class IndexConfig(_Strict):
    """HNSW index parameters, applied once the space is checked."""

    opclass: Literal["vector_cosine_ops", "vector_l2_ops", "vector_ip_ops", "vector_l1_ops"] = (
        "vector_cosine_ops"
    )
    m: int = Field(default=16, ge=2, le=100)
    ef_construction: int = Field(default=64, ge=4, le=1000)
    maintenance_work_mem: str = Field(
        default="1GB", pattern=r"^[0-9]+ ?(kB|MB|GB|TB)?$", description="For the build only"
    )
    max_parallel_maintenance_workers: int = Field(default=2, ge=0, le=64)


class RetentionConfig(_Strict):
    """When a retired space's column may be dropped, and where its backup goes first."""

    delay_hours: float = Field(default=168.0, ge=0, description="Wait after retirement")
    backup_dir: str = Field(
        default="backups", description="Relative paths are under the project root"
    )

    def backup_path(self) -> Path:
        path = Path(self.backup_dir).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path


class AdoptionConfig(_Strict):
    """How an existing column's claimed model is verified before it is registered."""

    sample_size: int = Field(default=300, gt=0, le=100_000)
    # The same model on other hardware agrees to ~1e-6; another model, or other settings
    # (normalisation, `dimensions`, truncation), falls far below.
    min_cosine: float = Field(default=0.999, gt=0, le=1)


class DriftConfig(_Strict):
    """What the drift sensors watch, how often, and how much each tick may cost."""

    sensor_status: Literal["running", "stopped"] = Field(
        default="running", description="Default status of both drift sensors in the UI"
    )
    interval_seconds: int = Field(
        default=300, ge=30, description="Cheap checks: new rows, change log, config, model swap"
    )
    content_cron: str = Field(
        default="0 3 * * *",
        description="When a content sweep (missing and stale vectors) starts; cron, UTC",
    )
    sweep_rows_per_tick: int = Field(
        default=200_000, gt=0, description="Rows hashed per sensor tick while a sweep runs"
    )
    max_runs_per_tick: int = Field(
        default=50, gt=0, description="Partition runs one tick may request; the rest wait"
    )

    @field_validator("content_cron")
    @classmethod
    def _cron(cls, value: str) -> str:
        from dagster._utils.schedules import is_valid_cron_string

        if not is_valid_cron_string(value):
            raise ValueError(f"{value!r} is not a cron expression like '0 3 * * *'")
        return value


class ShadowConfig(_Strict):
    """Shadow validation: retrieval quality of this space against the table's active one."""

    queries_file: str | None = Field(
        default=None,
        description=(
            'Labelled queries, JSON Lines: {"query": ..., "relevant": [...]} per line '
            "(format: embedding_assets/lifecycle/shadow.py); relative to the project root. "
            "Unset: self-retrieval on sampled rows"
        ),
    )
    key_column: str | None = Field(
        default=None,
        description=(
            "Column whose values the query file's `relevant` lists name (a natural key such "
            "as a title); default: the space's id_column"
        ),
    )
    k: int = Field(default=10, gt=0, le=1000, description="Top-k for recall, hit rate, overlap")
    sample_size: int = Field(
        default=200, gt=0, le=100_000, description="Rows sampled when there is no query file"
    )
    max_regression: float = Field(
        default=0.05, ge=0, le=1, description="WARN when the new space is worse by more than this"
    )
    compare_to: str | None = Field(
        default=None, description="Space to compare with; default: the table's active space"
    )
    report_dir: str = Field(
        default=".shadow_reports",
        description="Where the chart PNG is written (<space>.png); relative to the project root",
    )

    @field_validator("key_column")
    @classmethod
    def _key_ident(cls, value: str | None) -> str | None:
        return None if value is None else _check_identifier(value, "key_column")

    def queries_path(self) -> Path | None:
        if self.queries_file is None:
            return None
        path = Path(self.queries_file).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path

    def report_path(self) -> Path:
        path = Path(self.report_dir).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path


class SpaceConfig(_Strict):
    """One vector space: a table, a model, and the column the model writes (or wrote)."""

    name: str
    table: str
    id_column: str = "id"
    text_column: str | None = None
    text_sql: str | None = Field(
        default=None,
        description="SQL expression over the table's columns; trusted configuration, like a view",
    )
    where: str | None = Field(
        default=None,
        min_length=1,
        description=(
            "Row filter: a boolean SQL expression over the table's columns, e.g. "
            "`deleted_at IS NULL` (trusted configuration, like text_sql). Rows outside it are "
            "treated like rows without text: no vector, not missing"
        ),
    )
    target_column: str
    destination: Literal["column", "table"] = Field(
        default="column",
        description=(
            "Where the vectors live: `column` adds the vector and its provenance to the table; "
            "`table` writes them into a table of their own and leaves the source table alone"
        ),
    )
    destination_table: str | None = Field(
        default=None,
        description=(
            "`destination: table` only: `table` or `schema.table`; default "
            "embedding_backfills.<table>_<target_column>"
        ),
    )
    storage: Literal["vector", "halfvec"] = Field(
        default="vector",
        description=(
            "How the vectors are stored: `vector` (float4) or `halfvec` (float2: half the disk "
            "and index, HNSW up to 4000 dims); part of the space's identity"
        ),
    )
    destination_key: str | None = Field(
        default=None,
        description=(
            "`destination: table` only: the destination table's column that holds the source "
            "key (an adopted side table keyed by, e.g., message_id); default: id_column"
        ),
    )
    model: ModelConfig
    batch_size: int = Field(default=128, gt=0, le=10_000)
    partition_size: int = Field(default=100_000, gt=0)
    partitions_per_run: int = Field(
        default=10, gt=0, le=1000, description="Partitions grouped into one run by a backfill"
    )
    index: IndexConfig = IndexConfig()
    retention: RetentionConfig = RetentionConfig()
    adopt: bool = Field(
        default=False,
        description="target_column already holds this model's vectors: verify and register it",
    )
    adoption: AdoptionConfig = AdoptionConfig()
    drift: DriftConfig = DriftConfig()
    shadow: ShadowConfig = ShadowConfig()

    @field_validator("name")
    @classmethod
    def _name_shape(cls, value: str) -> str:
        if not _NAME_RE.fullmatch(value) or len(value) > 48:
            raise ValueError(
                "name must match [a-z][a-z0-9_]* (at most 48 characters), e.g. docs_minilm; "
                "it prefixes the space's asset keys"
            )
        return value

    @field_validator("id_column", "target_column", "text_column", "destination_key")
    @classmethod
    def _ident(cls, value: str | None) -> str | None:
        return None if value is None else _check_identifier(value, "column names")

    @field_validator("table", "destination_table")
    @classmethod
    def _table_shape(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = value.split(".")
        if len(parts) > 2:
            raise ValueError("table names must be `table` or `schema.table`")
        for part in parts:
            _check_identifier(part, "table and schema names")
        return value

    @model_validator(mode="after")
    def _text_source(self) -> SpaceConfig:
        if (self.text_column is None) == (self.text_sql is None):
            raise ValueError("set exactly one of text_column or text_sql")
        if self.target_column in {self.id_column, self.text_column}:
            raise ValueError("target_column must be a new column, not the id or text column")
        if len(self.model_key_column.encode()) > _MAX_IDENT:
            raise ValueError(
                "target_column is too long: its provenance columns "
                f"({self.text_hash_column}, {self.model_key_column}) exceed 63 bytes"
            )
        if self.destination == "column" and (
            self.destination_table is not None or self.destination_key is not None
        ):
            raise ValueError("destination_table and destination_key need `destination: table`")
        if self.destination == "table":
            if len(self.vector_table_name.encode()) > _MAX_IDENT:
                raise ValueError(
                    f"the default destination table name {self.vector_table_name!r} passes 63 "
                    "bytes; set destination_table"
                )
            if (self.vector_schema, self.vector_table_name) == (self.schema_name, self.table_name):
                raise ValueError("destination_table must not be the source table itself")
        return self

    # Per-row provenance lives next to the vector, written by the same UPDATE, so a vector
    # and the record of what produced it can never disagree.
    @property
    def text_hash_column(self) -> str:
        """sha256 of the text the vector was computed from (drift without re-embedding)."""
        return f"{self.target_column}_text_hash"

    @property
    def model_key_column(self) -> str:
        """The 64-bit key of the model identity that wrote the vector."""
        return f"{self.target_column}_model_key"

    @property
    def schema_name(self) -> str:
        return self.table.split(".")[0] if "." in self.table else "public"

    @property
    def table_name(self) -> str:
        return self.table.split(".")[-1]

    # Where the vector columns live: the source table, or the destination table. By default
    # the destination sits in the project's own schema, so the application's schema (and its
    # ORM migrations) sees nothing but the read view.
    @property
    def vector_schema(self) -> str:
        if self.destination == "column":
            return self.schema_name
        if self.destination_table is not None and "." in self.destination_table:
            return self.destination_table.split(".")[0]
        return "embedding_backfills" if self.destination_table is None else "public"

    @property
    def vector_key_column(self) -> str:
        """The column of the vectors' relation that holds the source key."""
        return self.destination_key or self.id_column

    @property
    def vector_table_name(self) -> str:
        if self.destination == "column":
            return self.table_name
        if self.destination_table is not None:
            return self.destination_table.split(".")[-1]
        return f"{self.table_name}_{self.target_column}"


class ProjectConfig(_Strict):
    spaces: list[SpaceConfig] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique(self) -> ProjectConfig:
        names = [s.name for s in self.spaces]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"space names must be unique; repeated: {', '.join(dupes)}")
        targets = [(s.schema_name, s.table_name, s.target_column) for s in self.spaces]
        if len(set(targets)) != len(targets):
            raise ValueError("two spaces write the same target column; give each its own column")
        tables = [
            (s.vector_schema, s.vector_table_name) for s in self.spaces if s.destination == "table"
        ]
        if len(set(tables)) != len(tables):
            raise ValueError("two spaces write the same destination_table; give each its own")
        return self

    def space(self, name: str) -> SpaceConfig:
        for space in self.spaces:
            if space.name == name:
                return space
        known = ", ".join(s.name for s in self.spaces)
        raise ConfigError(f"no space named {name!r} in the configuration; known spaces: {known}")


def config_path() -> Path:
    """The config file in use: $EMBEDDING_BACKFILLS_CONFIG, else the repo root's file."""
    env = os.environ.get(CONFIG_ENV)
    return Path(env) if env else PROJECT_ROOT / DEFAULT_CONFIG_NAME


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid configuration in {source}:"]
    for item in err.errors():
        loc = ".".join(str(p) for p in item["loc"]) or "(top level)"
        msg = item["msg"].removeprefix("Value error, ")
        if item["type"] == "extra_forbidden":
            msg = "unknown key; check the spelling against the config reference in README.md"
        elif item["type"] == "missing":
            msg = "required key is missing"
        lines.append(f"  - {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: object, source: str = "<config>") -> ProjectConfig:
    """Validate an already-parsed YAML document."""
    try:
        return ProjectConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def load_config(path: str | os.PathLike[str] | None = None) -> ProjectConfig:
    """Load and validate the spec; raise ConfigError naming the key and the fix."""
    file = Path(path) if path is not None else config_path()
    if not file.is_file():
        raise ConfigError(
            f"configuration file {file} not found; create it (see README.md, 'Configuration') "
            f"or point {CONFIG_ENV} at it"
        )
    try:
        data = yaml.safe_load(file.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"{file} is not valid YAML: {err}") from None
    return parse_config(data, str(file))
