"""Read a key range of rows in keyset pages: `WHERE id > last ORDER BY id LIMIT n`.

Each page is its own statement on an autocommit connection, so no snapshot stays open for
the whole partition (a long one would keep vacuum from cleaning up our own UPDATEs). The
database decides which rows are already done (same text hash, same model) and does not
send their text at all.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import psycopg
from psycopg import sql

from ..config import SpaceConfig
from ..db.destination import destination_of
from ..db.introspect import space_sql, table_ident
from ..db.keys import KeyType
from .partitions import KeyRange, range_filter


@dataclass
class Page:
    ids: list[object]  # key values as psycopg returns them: int, UUID or str
    texts: list[str | None]  # None for done rows and NULL text
    hashes: list[bytes | None]  # sha256 of the text; None when the text is NULL or blank
    done: list[bool]  # vector present, same text hash, same model
    has_vector: list[bool]  # something is stored for the row (cleared when its text is gone)

    @property
    def last_id(self) -> object:
        return self.ids[-1]


def done_predicate(space: SpaceConfig) -> sql.Composed:
    """True for a row `t` already embedded from its current text (`h.h`) by model `%(key)s`."""
    return sql.SQL("{tv} IS NOT NULL AND {tk} = %(key)s AND {thc} = h.h").format(**space_sql(space))


def page_query(space: SpaceConfig, key: KeyType, key_range: KeyRange, first: bool) -> sql.Composed:
    """One page of the range; `first` pages start at its lower bound, the others after the
    last key read (`%(after)s`). Bounds are literals: one plan per range, index order.

    A destination table gets the same bounds on its side of the join. PostgreSQL does not
    carry `t.id >= x` over to `e.id` through `e.id = t.id`, and without them a merge join
    (which the planner picks once the table is large) scans the destination's key from its
    first row on every page: at 4.4M rows, 3.4M index entries and their heap rows read for
    1,000 rows, 3.4-4.7 s a page instead of 9-30 ms."""

    def after(alias: str, k: KeyType) -> sql.Composable:
        if first:
            return sql.SQL("true")
        return sql.SQL("{} > {}").format(k.expr(alias), k.cast_text(sql.Placeholder("after")))

    dest = destination_of(space)
    vkey = key.of_column(space.vector_key_column)
    within = sql.SQL("{} AND {}").format(range_filter(vkey, key_range, "e"), after("e", vkey))
    return sql.SQL(
        """
        SELECT t.{id}, CASE WHEN d.done THEN NULL ELSE x.txt END, h.h, d.done, {stored}
        FROM {t} AS t
        {text_hash}
        {vjoin}
        CROSS JOIN LATERAL (SELECT {done} AS done) AS d
        WHERE {in_range} AND {after}
        ORDER BY {kx}
        LIMIT %(limit)s
        """
    ).format(
        done=done_predicate(space),
        stored=dest.stored(),
        in_range=range_filter(key, key_range),
        after=after("t", key),
        kx=key.expr("t"),
        **{**space_sql(space), "vjoin": dest.join(within)},
    )


def iter_pages(
    conn: psycopg.Connection,
    space: SpaceConfig,
    key: KeyType,
    key_range: KeyRange,
    model_key: int,
    page_size: int,
) -> Iterator[Page]:
    """Yield pages of the rows in the key range, in key order.

    Turns parallel query off on `conn`: a page is `page_size` rows by the primary key, and
    the planner, costing the whole range, would start a parallel worker for every page. Its
    startup costs more than the page (5M rows, 2 runs on 2 vCPU: 14-24 ms a page parallel,
    8-11 ms serial)."""
    conn.execute("SET max_parallel_workers_per_gather = 0")
    queries = (page_query(space, key, key_range, True), page_query(space, key, key_range, False))
    after: str | None = None
    while True:
        params = {"key": model_key, "limit": page_size, "after": after}
        rows = conn.execute(queries[after is not None], params).fetchall()
        if not rows:
            return
        yield Page(
            ids=[r[0] for r in rows],
            texts=[r[1] for r in rows],
            hashes=[r[2] for r in rows],
            done=[bool(r[3]) for r in rows],
            has_vector=[bool(r[4]) for r in rows],
        )
        if len(rows) < page_size:
            return
        after = key.to_text(rows[-1][0])


def count_rows(
    conn: psycopg.Connection, space: SpaceConfig, key: KeyType, key_range: KeyRange
) -> int:
    """Rows in the range (an index-only count: the basis for the ETA)."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {t} AS t WHERE {r}").format(
            t=table_ident(space), r=range_filter(key, key_range)
        )
    ).fetchone()
    return int(row[0]) if row else 0
