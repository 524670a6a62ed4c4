"""`model.truncate_dimensions`: a Matryoshka prefix stored as its own space.

On the real embedded database: a truncated space (the bundled MiniLM cut from 384 to 192,
and a halfvec one) through build, the four checks, the HNSW index, activation, `search()`
and rollback; the config refuses a truncation it cannot vouch for; the identity (and the
registry's record of it) tells a truncated space from the full one, while every identity
without truncation keeps its old key; a config edited between the two is refused; the
openai provider lets the server shorten when it sends `dimensions`, and cuts the vectors
itself when it does not, online and through the Batch API.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import psycopg
import pytest
from conftest import (
    create_docs,
    execute_checks,
    make_space,
    materialize_partitions,
    materialize_target,
    non_empty_count,
    run_asset,
)
from dagster import DagsterInstance
from openai_server import FakeEmbeddingsServer

from embedding_assets.config import ModelConfig, ProjectConfig
from embedding_assets.db.registry import get_space
from embedding_assets.drift.identity import config_verdict, fingerprint_verdict
from embedding_assets.errors import ConfigError, DimensionMismatchError, SpaceConflictError
from embedding_assets.lifecycle.activation import rollback
from embedding_assets.lifecycle.read_path import search
from embedding_assets.pipeline.backfill import embed_range
from embedding_assets.pipeline.batch import embed_range_batch
from embedding_assets.pipeline.target import prepare_target_column
from embedding_assets.providers import ModelIdentity, build_provider
from embedding_assets.providers.truncate import TruncatedProvider

MINILM = {"provider": "sentence-transformers", "name": "all-MiniLM-L6-v2", "dimensions": 384}
OPENAI_MODEL = "text-embedding-3-small"
KEY_ENV = "EMBED_TEST_API_KEY"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv(KEY_ENV, "sk-test-not-a-real-key")


def unit(rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


# -- the whole life ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "storage"),
    [
        ({**MINILM, "truncate_dimensions": 192, "truncation": "allow"}, "vector"),
        ({"dimensions": 64, "truncate_dimensions": 24, "truncation": "allow"}, "halfvec"),
    ],
    ids=["minilm-192-of-384", "hash-halfvec-24-of-64"],
)
def test_a_truncated_space_through_its_life(
    conn: psycopg.Connection,
    dagster_instance: DagsterInstance,
    model: dict[str, Any],
    storage: str,
) -> None:
    create_docs(conn, 400)
    old = make_space(target_column="emb_old")
    space = make_space(model=model, storage=storage, partition_size=200)
    k, native = model["truncate_dimensions"], model["dimensions"]
    for s in (old, space):
        materialize_target(s, dagster_instance)
        materialize_partitions(s, dagster_instance)
        checks = execute_checks(s, dagster_instance)
        assert all(c["passed"] for c in checks.values()), checks
        run_asset(s, dagster_instance, "hnsw_index")
        run_asset(s, dagster_instance, "registry")

    declared, low, high, count = conn.execute(
        "SELECT (SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
        "  WHERE attrelid = 'docs'::regclass AND attname = 'emb'),"
        " min(vector_norm(emb::vector)), max(vector_norm(emb::vector)), count(emb) FROM docs"
    ).fetchone()
    assert declared == f"{storage}({k})"
    assert count == non_empty_count(conn)
    assert 1 - 2e-3 < low <= high < 1 + 2e-3  # re-normalised after the cut
    # the stored vector is the full model's prefix, re-normalised
    body, stored = conn.execute(
        "SELECT body, emb::vector::real[] FROM docs WHERE id = 17"
    ).fetchone()
    full_model = {key: v for key, v in model.items() if key not in ("truncate_dimensions",)}
    full = build_provider(make_space(model=full_model).model).embed([body]).vectors
    np.testing.assert_allclose(stored, unit(full[:, :k])[0], atol=2e-3)

    record = get_space(conn, space.name)
    assert record is not None and record.status == "active"
    assert (record.dimensions, record.truncated_from) == (k, native)
    assert record.identity == build_provider(space.model).identity  # round trip
    assert len(record.fingerprint["vectors"][0]) == k  # type: ignore[index]
    assert conn.execute(
        "SELECT dimensions, truncated_from FROM embedding_backfills.active_spaces WHERE space = %s",
        (space.name,),
    ).fetchone() == (k, native)
    opclass = "halfvec_cosine_ops" if storage == "halfvec" else "vector_cosine_ops"
    index = conn.execute(
        "SELECT pg_get_indexdef(indexrelid) FROM pg_index WHERE indrelid = 'docs'::regclass"
        " AND NOT indisprimary"
    ).fetchall()
    assert [i for (i,) in index if "hnsw" in i and f"emb {opclass}" in i], index

    project = ProjectConfig.model_construct(spaces=[old, space])
    found = search(conn, "docs", "document number 17 about topic 3", k=3, config=project)
    assert found.space == space.name and found.hits[0].id == 17
    assert rollback(conn, project, "public.docs").activated == old.name


# -- config --------------------------------------------------------------------------------


def test_a_truncation_is_refused_unless_the_model_is_known_or_allowed() -> None:
    with pytest.raises(ConfigError) as info:
        make_space(model={**MINILM, "truncate_dimensions": 192})
    message = str(info.value)
    assert "spaces.0.model" in message
    assert "not known to be Matryoshka-trained" in message
    assert "truncation: allow" in message and "shadow" in message and "compare_to" in message
    allowed = make_space(model={**MINILM, "truncate_dimensions": 192, "truncation": "allow"})
    assert allowed.model.stored_dimensions == 192 and allowed.model.dimensions == 384

    for size in (384, 512):
        with pytest.raises(ConfigError, match=f"truncate_dimensions \\({size}\\) must be below"):
            make_space(model={**MINILM, "truncate_dimensions": size, "truncation": "allow"})
    with pytest.raises(ConfigError, match="greater than 0"):
        make_space(model={**MINILM, "truncate_dimensions": 0, "truncation": "allow"})


@pytest.mark.parametrize(
    ("provider", "name", "dims"),
    [
        ("openai", "text-embedding-3-large", 3072),
        ("sentence-transformers", "nomic-ai/nomic-embed-text-v1.5", 768),
        ("sentence-transformers", "/models/Nomic-Embed-Text-v1.5/", 768),  # a local copy
        ("sentence-transformers", "Qwen/Qwen3-Embedding-0.6B", 1024),
        ("sentence-transformers", "Snowflake/snowflake-arctic-embed-l-v2.0", 1024),
        ("sentence-transformers", "google/embeddinggemma-300m", 768),
    ],
)
def test_a_matryoshka_model_may_be_truncated(provider: str, name: str, dims: int) -> None:
    model = ModelConfig(provider=provider, name=name, dimensions=dims, truncate_dimensions=256)  # type: ignore[arg-type]
    assert model.stored_dimensions == 256 and model.dimensions_label == f"256d of {dims}d"


# -- identity ------------------------------------------------------------------------------


def test_identities_without_truncation_keep_their_keys() -> None:
    # computed on main before `truncated_from` existed: every stored model_key stays valid
    minilm = ModelIdentity("sentence-transformers", "all-MiniLM-L6-v2", "sha256:abc", 384, True)
    assert minilm.key == 8916197543187864074
    assert ModelIdentity("openai", OPENAI_MODEL, None, 1536, True).key == -8880551128514287565
    assert "truncated_from" not in minilm.as_dict()

    cut = ModelIdentity("sentence-transformers", "all-MiniLM-L6-v2", "sha256:abc", 192, True, 384)
    assert cut.key != minilm.key
    native_192 = ModelIdentity("sentence-transformers", "all-MiniLM-L6-v2", "sha256:abc", 192, True)
    assert cut.key != native_192.key  # a 192-d prefix is not a 192-d model
    assert cut.label() == "sentence-transformers:all-MiniLM-L6-v2@sha256:abc (192d of 384d)"


def test_a_swap_between_the_truncated_and_the_full_space_is_caught(
    conn: psycopg.Connection, db_url: str
) -> None:
    create_docs(conn, 60)
    cut = make_space(model={"dimensions": 32, "truncate_dimensions": 8, "truncation": "allow"})
    prepare_target_column(conn, cut, build_provider(cut.model))
    embed_range(cut, build_provider(cut.model), database_url=db_url)
    written = conn.execute("SELECT count(emb), sum(xmin::text::bigint) FROM docs").fetchone()
    record = get_space(conn, cut.name)
    assert record is not None

    # the config edited to the full model (the column's vector(8) says no), and to a cut of
    # the same size from another model width (only the registry can tell): both refused
    # before anything is written
    full = make_space(name=cut.name, model={"dimensions": 32})
    other = make_space(
        name=cut.name, model={"dimensions": 64, "truncate_dimensions": 8, "truncation": "allow"}
    )
    refusals = (
        (full, "is vector\\(8\\) but the model is configured for 32"),
        (
            other,
            "stores the first 8 of 32 dimensions, but the configuration now gives the first 8 "
            "of 64",
        ),
    )
    for edited, refusal in refusals:
        provider = build_provider(edited.model)
        with pytest.raises(SpaceConflictError, match=refusal):
            prepare_target_column(conn, edited, provider)
        with pytest.raises(SpaceConflictError):
            embed_range(edited, provider, database_url=db_url)
        # the drift checks say so too, and the fingerprint alone would have told
        assert not config_verdict(conn, edited, provider, record).passed
        assert not fingerprint_verdict(edited, provider, record).passed
    assert (
        conn.execute("SELECT count(emb), sum(xmin::text::bigint) FROM docs").fetchone() == written
    )

    # and the other way round: a full 8-d space whose config becomes a cut to 8 of 32, in a
    # plain `vector` column (no declared dimension): the registry refuses it by name
    conn.execute("CREATE TABLE docs2 (id bigint PRIMARY KEY, body text, emb vector)")
    conn.execute("INSERT INTO docs2 SELECT id, body FROM docs")
    whole = make_space(table="public.docs2", model={"dimensions": 8})
    prepare_target_column(conn, whole, build_provider(whole.model))
    shortened = make_space(
        name=whole.name,
        table="public.docs2",
        model={"dimensions": 32, "truncate_dimensions": 8, "truncation": "allow"},
    )
    with pytest.raises(
        SpaceConflictError,
        match="stores the full 8-dimensional vectors, but the configuration now gives the first",
    ):
        prepare_target_column(conn, shortened, build_provider(shortened.model))


# -- openai: shortened by the server, or cut by the client ------------------------------------


def openai_model(base_url: str, **overrides: Any) -> dict[str, Any]:
    return {
        "provider": "openai",
        "name": OPENAI_MODEL,
        "dimensions": 16,
        "truncate_dimensions": 6,
        "base_url": base_url,
        "api_key_env": KEY_ENV,
        "max_retries": 0,
        "timeout_seconds": 5.0,
        **overrides,
    }


def test_openai_shortens_on_the_server_when_it_sends_dimensions_else_the_client_cuts() -> None:
    texts = ["the first text", "the second one", "Zażółć gęślą jaźń."]
    with FakeEmbeddingsServer(dims=16) as server:
        want = unit(np.vstack([server.vector(t, OPENAI_MODEL, 16)[:6] for t in texts]))
        identities = []
        for send in ("auto", "always", "never"):
            provider = build_provider(
                ModelConfig(**openai_model(server.base_url, send_dimensions=send))
            )
            vectors = provider.embed(texts).vectors
            request = server.requests[-1]
            if send == "never":
                assert isinstance(provider, TruncatedProvider)  # native back, cut here
                assert not request.dimensions_sent
            else:
                assert not isinstance(provider, TruncatedProvider)  # asked for 6, got 6
                assert request.dimensions_sent and request.dimensions == 6
            assert vectors.shape == (3, 6)
            np.testing.assert_allclose(vectors, want, atol=1e-6)
            np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
            identities.append(provider.identity)
            provider.close()
        # shortened there or cut here: the same space, not the full one
        assert identities[0] == identities[1] == identities[2]
        assert identities[0].truncated_from == 16 and identities[0].dimensions == 6
        server.fail_next("wrong_dims", dims=16)  # a server that ignores `dimensions`
        provider = build_provider(ModelConfig(**openai_model(server.base_url)))
        with pytest.raises(DimensionMismatchError, match="16-dimensional"):
            provider.embed(texts)
        provider.close()


@pytest.mark.parametrize("send", ["auto", "never"])
def test_batch_mode_shortens_on_the_server_or_cuts_the_results(
    conn: psycopg.Connection, db_url: str, send: str
) -> None:
    # called directly, not through Dagster: a failure fails here, not after the run's retries
    create_docs(conn, 60)
    with FakeEmbeddingsServer(dims=16) as server:
        model = openai_model(
            server.base_url, send_dimensions=send, mode="batch", batch_poll_seconds=0.01
        )
        space = make_space(model=model, partition_size=10_000)
        provider = build_provider(space.model)
        prepare_target_column(conn, space, provider)
        stats = embed_range_batch(space, provider, database_url=db_url, sleep=lambda _: None)
        assert stats.rows_embedded == non_empty_count(conn)
        (batch_id,) = server.batches.created
        raw = server.batches.files[server.batches.records[batch_id]["input_file_id"]]
        bodies = [json.loads(line)["body"] for line in raw.splitlines()]
        assert {b.get("dimensions") for b in bodies} == ({6} if send == "auto" else {None})
        rows = conn.execute(
            "SELECT body, emb::real[] FROM docs WHERE emb IS NOT NULL ORDER BY id"
        ).fetchall()
        want = unit(np.vstack([server.vector(r[0], OPENAI_MODEL, 16)[:6] for r in rows]))
        np.testing.assert_allclose(np.asarray([r[1] for r in rows]), want, atol=1e-6)
        provider.close()


def test_the_index_estimate_sizes_halfvec_at_two_bytes_a_component() -> None:
    from embedding_assets.config import IndexConfig
    from embedding_assets.reports.index_estimate import estimate_index

    for dims, ratio in ((384, 0.67), (1024, 0.33)):  # measured 0.57x and 0.33x
        vector = estimate_index(100_000, dims, IndexConfig()).size_bytes
        half = estimate_index(100_000, dims, IndexConfig(), "halfvec").size_bytes
        assert half / vector == pytest.approx(ratio, abs=0.01)
