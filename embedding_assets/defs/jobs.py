"""Operator jobs that are not materializations: rollback and dropping a retired space.

Launch them from the UI (Jobs) with run config, or use the CLI equivalents.
"""

from dagster import Config, OpExecutionContext, job, op
from pydantic import Field

from ..config import load_config
from ..lifecycle.activation import rollback
from ..lifecycle.retention import backup_space, drop_retired_space
from .resources import PostgresResource


class RollbackConfig(Config):
    table: str = Field(description="schema.table whose previous space becomes active again")
    to_space: str | None = Field(default=None, description="A specific retired space")


class RetentionConfig(Config):
    space: str = Field(description="The retired space to back up and drop")
    backup_only: bool = Field(default=False, description="Write the backup, drop nothing")


@op
def rollback_op(
    context: OpExecutionContext, config: RollbackConfig, postgres: PostgresResource
) -> None:
    with postgres.connect() as conn:
        switch = rollback(conn, load_config(), config.table, config.to_space)
    context.log.info(f"{switch.activated} is active again; retired: {', '.join(switch.retired)}")


@op
def retention_op(
    context: OpExecutionContext, config: RetentionConfig, postgres: PostgresResource
) -> None:
    space = load_config().space(config.space)
    with postgres.connect() as conn:
        backup = backup_space(conn, space)
        context.log.info(f"backed up {backup.rows} vectors of {space.name} to {backup.path}")
        if not config.backup_only:
            dropped = drop_retired_space(conn, space)
            context.log.info(f"dropped {', '.join(dropped)}")


@job(description="Make the previous vector space of a table active again (if still whole).")
def rollback_vector_space() -> None:
    rollback_op()


@job(description="Back up a retired space's vectors, then drop its index and columns.")
def drop_retired_vector_space() -> None:
    retention_op()
