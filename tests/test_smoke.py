"""`embedding-backfills smoke` against a real OpenAI-compatible HTTP server, and the
endpoint classification it reports."""

from __future__ import annotations

import json
from pathlib import Path

import psycopg
import pytest
from conftest import create_docs, make_space
from dagster_dev import write_spaces_config
from openai_server import FakeEmbeddingsServer
from typer.testing import CliRunner

from embedding_assets.cli import app
from embedding_assets.config import SpaceConfig
from embedding_assets.pipeline.target import prepare_target_column
from embedding_assets.providers import SENTINEL_TEXTS, build_provider
from embedding_assets.reports.endpoint import classify_address, endpoint_of

API_KEY = "sk-test-secret-123"


def openai_space(base_url: str, dims: int = 8, **overrides: object) -> SpaceConfig:
    model = {
        "provider": "openai",
        "name": "nomic-embed-text",
        "dimensions": dims,
        "base_url": base_url,
        "max_retries": 1,
        "timeout_seconds": 5,
    }
    return make_space(model=model, **overrides)


def run_smoke(
    space: SpaceConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *args: str
) -> tuple[int, dict, str]:
    """Invoke the CLI with --json and with tables; return exit code, JSON, human output."""
    config = write_spaces_config(tmp_path / "spaces.yaml", space)
    monkeypatch.setenv("EMBEDDING_BACKFILLS_CONFIG", str(config))
    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)
    runner = CliRunner()
    as_json = runner.invoke(app, ["smoke", space.name, "--json", *args])
    human = runner.invoke(app, ["smoke", space.name, *args])
    assert as_json.exit_code == human.exit_code, human.output
    assert_nothing_secret(as_json.output + human.output)
    return as_json.exit_code, json.loads(as_json.stdout), human.output


def assert_nothing_secret(output: str) -> None:
    # "ok", the short sentinel, is also a verdict word: every longer one is checked.
    for text in (t for t in SENTINEL_TEXTS if len(t) > 2):
        assert text not in output
    for word in ("Zażółć", "jaźń", "quick brown fox", "document number", API_KEY):
        assert word not in output


def test_smoke_passes_on_a_local_endpoint_and_prints_no_text(
    conn: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_docs(conn, 50)  # rows exist, and smoke must not send any of them
    with FakeEmbeddingsServer(dims=8, api_key=API_KEY) as server:
        space = openai_space(server.base_url)
        code, report, human = run_smoke(space, tmp_path, monkeypatch, "--calls", "5")
        inputs = [text for request in server.requests for text in request.inputs]
        port = server.port

    assert code == 0, human
    assert report["returned_dimension"] == report["configured_dimension"] == 8
    assert report["endpoint"] == {"kind": "local", "host": f"127.0.0.1:{port}"}
    assert report["passed"] is True
    assert report["verdicts"] == {
        "dimension": True,
        "sentinels": True,
        "batch": True,
        "fingerprint": True,
    }
    assert [s["index"] for s in report["sentinels"]] == [1, 2, 3, 4, 5]
    assert all(abs(s["norm"] - 1) < 1e-3 for s in report["sentinels"])
    assert report["batch"]["returned"] == 32 and report["batch"]["min_cosine"] > 0.999
    assert report["latency"]["calls"] == 5
    assert report["latency"]["p95_ms"] >= report["latency"]["p50_ms"] > 0
    assert report["fingerprint"]["status"] == "unregistered"
    assert "pass" in human and "local" in human
    # the key reached the server (it answers 401 otherwise), and only sentinels and fillers
    assert set(SENTINEL_TEXTS) <= set(inputs)
    assert not any("document number" in text for text in inputs)


def test_smoke_fails_when_the_endpoint_returns_another_dimension(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeEmbeddingsServer(dims=8) as server:
        space = openai_space(server.base_url, dims=12)
        code, report, human = run_smoke(space, tmp_path, monkeypatch)

    assert code == 1
    assert (report["returned_dimension"], report["configured_dimension"]) == (8, 12)
    assert report["verdicts"] == {"dimension": False} and report["passed"] is False
    assert "returned 8, configured 12" in human and "FAIL" in human


def test_smoke_fails_when_the_registered_fingerprint_no_longer_matches(
    conn: psycopg.Connection, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    create_docs(conn, 20)
    with FakeEmbeddingsServer(dims=8, salt="model-a") as server:
        space = openai_space(server.base_url)
        prepare_target_column(conn, space, build_provider(space.model))
        code, report, _ = run_smoke(space, tmp_path, monkeypatch, "--calls", "1")
        assert code == 0 and report["fingerprint"]["status"] == "match"

    with FakeEmbeddingsServer(dims=8, salt="model-b") as swapped:
        space_b = openai_space(swapped.base_url, name=space.name)
        code, report, human = run_smoke(space_b, tmp_path, monkeypatch, "--calls", "1")

    assert code == 1
    assert report["fingerprint"]["status"] == "mismatch"
    assert report["fingerprint"]["min_cosine"] < 0.999
    assert report["verdicts"]["dimension"] and not report["verdicts"]["fingerprint"]
    assert "mismatch" in human


def test_smoke_of_an_unreachable_endpoint_is_an_error(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from openai_server import closed_port

    space = openai_space(f"http://127.0.0.1:{closed_port()}/v1")
    config = write_spaces_config(tmp_path / "spaces.yaml", space)
    monkeypatch.setenv("EMBEDDING_BACKFILLS_CONFIG", str(config))
    result = CliRunner().invoke(app, ["smoke", space.name, "--json"])
    assert result.exit_code == 2
    assert "cannot reach the embeddings endpoint" in result.output


@pytest.mark.parametrize(
    ("address", "kind"),
    [
        ("http://127.0.0.1:11434/v1", "local"),
        ("http://localhost:8080/v1", "local"),
        ("http://[::1]:8080/v1", "local"),
        ("unix:///run/embeddings.sock", "local"),
        ("http://10.1.2.3/v1", "private-network"),
        ("http://192.168.1.5:11434/v1", "private-network"),
        ("http://172.20.0.4:8000/v1", "private-network"),
        ("http://169.254.10.1/v1", "private-network"),
        ("http://[fd12:3456::1]:80/v1", "private-network"),
        ("http://gpu-box.local:8080/v1", "private-network"),
        ("http://ollama:11434/v1", "private-network"),
        ("https://api.openai.com/v1", "public-cloud"),
        ("https://embeddings.example-cloud.com/v1", "public-cloud"),
        ("https://8.8.8.8/v1", "public-cloud"),
        ("api.openai.com", "public-cloud"),
    ],
)
def test_endpoint_classification(address: str, kind: str) -> None:
    assert classify_address(address) == kind


def test_endpoint_of_a_model_hides_credentials() -> None:
    hosted = make_space(model={"provider": "openai", "name": "text-embedding-3-small"}).model
    assert endpoint_of(hosted).as_dict() == {"kind": "public-cloud", "host": "api.openai.com"}
    proxy = make_space(
        model={"provider": "openai", "name": "m", "base_url": "https://u:pw@proxy.example.com/v1"}
    ).model
    assert endpoint_of(proxy).as_dict() == {"kind": "public-cloud", "host": "proxy.example.com"}
    assert endpoint_of(make_space().model).as_dict() == {"kind": "local", "host": "in-process"}
