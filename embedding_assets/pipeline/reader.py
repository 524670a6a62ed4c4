"""Read a range of rows in keyset pages: `WHERE id > last ORDER BY id LIMIT n`.

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
from ..db.introspect import space_sql, table_ident


@dataclass
class Page:
    ids: list[int]
    texts: list[str | None]  # None for done rows and NULL text
    hashes: list[bytes | None]  # sha256 of the text; None when the text is NULL or blank
    done: list[bool]  # vector present, same text hash, same model
    has_vector: list[bool]

    @property
    def last_id(self) -> int:
        return self.ids[-1]


def done_predicate(space: SpaceConfig) -> sql.Composed:
    """True for a row `t` already embedded from its current text (`h.h`) by model `%(key)s`."""
    return sql.SQL("t.{v} IS NOT NULL AND t.{k} = %(key)s AND t.{hc} = h.h").format(
        **space_sql(space)
    )


def page_query(space: SpaceConfig) -> sql.Composed:
    return sql.SQL(
        """
        SELECT t.{id}, CASE WHEN d.done THEN NULL ELSE x.txt END, h.h, d.done,
               t.{v} IS NOT NULL
        FROM {t} AS t
        {text_hash}
        CROSS JOIN LATERAL (SELECT {done} AS done) AS d
        WHERE t.{id} > %(after)s AND t.{id} <= %(last)s
        ORDER BY t.{id}
        LIMIT %(limit)s
        """
    ).format(done=done_predicate(space), **space_sql(space))


def iter_pages(
    conn: psycopg.Connection,
    space: SpaceConfig,
    first: int,
    last: int,
    model_key: int,
    page_size: int,
) -> Iterator[Page]:
    """Yield pages of rows with first <= id <= last, in id order."""
    query = page_query(space)
    after = first - 1
    while True:
        rows = conn.execute(
            query, {"key": model_key, "after": after, "last": last, "limit": page_size}
        ).fetchall()
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
        after = rows[-1][0]


def count_rows(conn: psycopg.Connection, space: SpaceConfig, first: int, last: int) -> int:
    """Rows in the range (an index-only count: the basis for the ETA)."""
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {t} WHERE {id} BETWEEN %s AND %s").format(
            t=table_ident(space), id=sql.Identifier(space.id_column)
        ),
        (first, last),
    ).fetchone()
    return int(row[0]) if row else 0
