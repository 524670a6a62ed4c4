"""Keep alembic's autogenerate away from what this project adds to an application's database.

In column mode a space adds `<target>`, `<target>_text_hash` and `<target>_model_key` to the
application's own table, an HNSW index on `<target>`, and its registry to the
`embedding_backfills` schema. None of that is in the application's SQLAlchemy models, so the
next `alembic revision --autogenerate` proposes dropping it: one careless deploy away from
losing every vector. In the migration environment's `env.py`:

    from embedding_assets.integrations.alembic import include_object

    context.configure(connection=..., target_metadata=..., include_object=include_object)

Two rules recognise the project's objects, and neither needs a database connection:

- By shape: a column `X` whose table also has `X_text_hash` and `X_model_key` is a space's
  vector column; those three columns and the index `index_name()` gives for `X` are the
  project's. The project always adds the three together, in one ALTER TABLE, and nobody
  names columns like that by chance, so the reflected table alone is proof. It works in the
  application's migration repository, which has no `embedding_backfills.yaml`, and it still
  protects a space that was removed from the configuration (or built from another one)
  while its columns are still there: the configuration is not the inventory, the table is.
- By name, from the configuration when there is one: each configured space's three columns
  and its index. This also covers an adopted column (`adopt: true`), which has no provenance
  columns to be recognised by.

Tables and views of the `embedding_backfills` schema are skipped as well (alembic sees them
only with `include_schemas=True`). The change-log triggers need nothing: alembic compares
neither triggers nor functions, and the trigger functions live in that schema. Everything
else, the application's own columns and indexes included, is compared as usual.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable

# Registers `vector`, `halfvec`, ... with SQLAlchemy's PostgreSQL reflection, so that
# reflecting a table with a space does not warn "Did not recognize type 'vector'".
import pgvector.sqlalchemy  # noqa: F401
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.schema import SchemaItem, Table

from ..config import CONFIG_ENV, ProjectConfig, SpaceConfig, config_path, load_config
from ..lifecycle.index import index_name

SCHEMA = "embedding_backfills"
# The suffixes of SpaceConfig.text_hash_column and SpaceConfig.model_key_column.
TEXT_HASH_SUFFIX = "_text_hash"
MODEL_KEY_SUFFIX = "_model_key"
# Alembic reports tables of the connection's default schema with schema None; configured
# tables without a schema are in `public` (SpaceConfig.schema_name).
DEFAULT_SCHEMA = "public"

IncludeObject = Callable[[SchemaItem, str | None, str, bool, SchemaItem | None], bool]


def space_columns(target_column: str) -> tuple[str, str, str]:
    """The columns a space writes: the vector and its two provenance columns."""
    return (target_column, target_column + TEXT_HASH_SUFFIX, target_column + MODEL_KEY_SUFFIX)


def vector_columns(table: Table) -> set[str]:
    """Columns of `table` that are a space's vectors: both provenance columns sit beside them."""
    names = {column.name for column in table.columns}
    return {
        name
        for name in names
        if name + TEXT_HASH_SUFFIX in names and name + MODEL_KEY_SUFFIX in names
    }


def _index_name(table_name: str, target_column: str) -> str:
    # index_name() reads only the table and target column; the rest of a space is irrelevant.
    return index_name(SpaceConfig.model_construct(table=table_name, target_column=target_column))


def _table_of(item: SchemaItem | None) -> Table | None:
    if item is None or isinstance(item, Table):
        return item
    try:  # Column, Index, constraints; an unattached constraint raises instead of None
        table = getattr(item, "table", None)
    except InvalidRequestError:
        return None
    return table if isinstance(table, Table) else None


class ProjectObjects:
    """An alembic `include_object` hook: False for the project's objects, True otherwise.

    `spaces` adds name-based recognition of those spaces to the shape-based rule (module
    docstring); with no spaces only the shape counts.
    """

    def __init__(self, spaces: Iterable[SpaceConfig] = ()) -> None:
        self.spaces = tuple(spaces)
        self._columns = frozenset(
            (s.schema_name, s.table_name, column)
            for s in self.spaces
            for column in space_columns(s.target_column)
        )
        self._indexes = frozenset((s.vector_schema, index_name(s)) for s in self.spaces)
        # `destination: table` spaces: their own tables (by default in the project's schema,
        # which the schema rule covers; a destination_table elsewhere is known by name)
        self._tables = frozenset(
            (s.vector_schema, s.vector_table_name) for s in self.spaces if s.destination == "table"
        )

    def __call__(
        self,
        object_: SchemaItem,
        name: str | None,
        type_: str,
        reflected: bool,
        compare_to: SchemaItem | None,
    ) -> bool:
        table = _table_of(object_)
        if table is None:
            return True
        if table.schema == SCHEMA:
            return False
        schema = table.schema or DEFAULT_SCHEMA
        if (schema, table.name) in self._tables:
            return False
        # The shape is judged on the database's side: the reflected object itself, or the
        # reflected counterpart a model object is compared to (None: not in the database).
        db_table = _table_of(object_ if reflected else compare_to)
        vectors = vector_columns(db_table) if db_table is not None else set()
        if type_ == "column":
            if (schema, table.name, name) in self._columns:
                return False
            return not any(name in space_columns(v) for v in vectors)
        if type_ == "index":
            if (schema, name) in self._indexes:
                return False
            return not any(name == _index_name(table.name, v) for v in vectors)
        return True

    def __repr__(self) -> str:
        return f"ProjectObjects(spaces={[s.name for s in self.spaces]})"


def configured_spaces() -> list[SpaceConfig]:
    """The configuration file's spaces, or none when the default file does not exist.

    A $EMBEDDING_BACKFILLS_CONFIG naming a missing file, or an invalid file, raises
    ConfigError: a typo must not quietly narrow what the filter protects.
    """
    if not os.environ.get(CONFIG_ENV) and not config_path().is_file():
        return []
    return load_config().spaces


def include_object_for(config: ProjectConfig | None = None) -> ProjectObjects:
    """The hook for `config`'s spaces (default: the configuration file's, read now) + shape."""
    return ProjectObjects(configured_spaces() if config is None else config.spaces)


@functools.cache
def _default_filter() -> ProjectObjects:
    return include_object_for()


def include_object(
    object_: SchemaItem,
    name: str | None,
    type_: str,
    reflected: bool,
    compare_to: SchemaItem | None,
) -> bool:
    """Zero-config hook: the shape rule plus the configuration file's spaces, if any.

    The file is read at the first call, not at import, so `env.py` imports it for free.
    """
    return _default_filter()(object_, name, type_, reflected, compare_to)
