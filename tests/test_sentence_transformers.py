"""The real bundled all-MiniLM-L6-v2, end to end through Dagster."""

from __future__ import annotations

import numpy as np
import psycopg
from conftest import make_space, materialize_partitions, materialize_target, totals
from dagster import DagsterInstance

from embedding_assets.providers import build_provider
from embedding_assets.providers.base import SENTINEL_TEXTS

SENTENCES = [
    "The cat sleeps on the warm windowsill.",
    "A kitten naps in the sunshine by the window.",
    "Stock markets fell sharply after the interest rate decision.",
    "Shares dropped when the central bank raised rates.",
    "Kot śpi na ciepłym parapecie.",
]


def test_real_model_writes_meaningful_normalised_vectors(
    conn: psycopg.Connection, dagster_instance: DagsterInstance
) -> None:
    conn.execute("CREATE TABLE docs (id int PRIMARY KEY, body text)")
    rows = [*SENTENCES, "word " * 600, None]  # one text past the model's 256 tokens
    for i, body in enumerate(rows, start=1):
        conn.execute("INSERT INTO docs VALUES (%s, %s)", (i, body))
    space = make_space(
        model={"provider": "sentence-transformers", "name": "all-MiniLM-L6-v2", "dimensions": 384}
    )
    materialize_target(space, dagster_instance)
    runs = materialize_partitions(space, dagster_instance)

    assert totals(runs, "rows_embedded") == 6
    assert totals(runs, "rows_truncated") == 1  # cut by the model's rule, not a failure
    assert totals(runs, "rows_empty") == 1
    # tokens the model processed: the long text counts its first 256 only
    assert 256 < totals(runs, "tokens") < 400
    vectors = {
        i: np.asarray(v, dtype=np.float32)
        for i, v in conn.execute("SELECT id, emb::real[] FROM docs WHERE emb IS NOT NULL")
    }
    assert all(v.shape == (384,) for v in vectors.values())
    assert all(abs(np.linalg.norm(v) - 1) < 1e-3 for v in vectors.values())
    sim = {i: float(vectors[1] @ vectors[i]) for i in (2, 3, 4)}
    assert sim[2] > sim[3] and sim[2] > sim[4]  # cats are closer to cats than to markets


def test_identity_and_fingerprint_are_stable() -> None:
    space = make_space(
        model={"provider": "sentence-transformers", "name": "all-MiniLM-L6-v2", "dimensions": 384}
    )
    provider = build_provider(space.model)
    identity = provider.identity
    assert identity.provider == "sentence-transformers"
    assert identity.revision and identity.revision.startswith("sha256:")
    first, second = provider.fingerprint(), provider.fingerprint()
    assert first == second and len(first.vectors) == len(SENTINEL_TEXTS)
    hashed = build_provider(make_space(model={"dimensions": 384}).model).fingerprint()
    assert not first.matches(hashed)  # same dimension, another model: told apart
