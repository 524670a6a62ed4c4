"""Pacing: request and token budgets, and 429 pauses, shared by every run of an endpoint.

Two `PostgresRateLimiter`s on their own connections stand for two runs on two machines:
the database row is all they share. Waits are the limiter's answers (seconds to wait),
never measured durations.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from openai_server import FakeEmbeddingsServer

from embedding_assets.config import ModelConfig
from embedding_assets.providers import (
    LocalRateLimiter,
    PostgresRateLimiter,
    build_provider,
)
from embedding_assets.providers.openai import OpenAIProvider
from embedding_assets.providers.pacing import BURST_SECONDS, bucket_name

MODEL = "text-embedding-3-small"


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


def config(base_url: str = "http://127.0.0.1:9/v1", **overrides: Any) -> ModelConfig:
    fields: dict[str, Any] = {
        "provider": "openai",
        "name": MODEL,
        "dimensions": 8,
        "base_url": base_url,
        "max_retries": 2,
        "max_concurrent_requests": 1,
    }
    fields.update(overrides)
    return ModelConfig(**fields)


@pytest.fixture
def limiters(db_url: str) -> Iterator[Any]:
    made: list[PostgresRateLimiter] = []

    def make(model: ModelConfig) -> PostgresRateLimiter:
        limiter = PostgresRateLimiter(db_url, model)
        made.append(limiter)
        return limiter

    yield make
    for limiter in made:
        limiter.close()


def test_the_bucket_names_the_endpoint_and_model_never_credentials() -> None:
    model = config("https://user:s3cret@proxy.example:8443/v1/")
    assert bucket_name(model) == f"https://proxy.example:8443/v1 {MODEL}"


def test_local_limiter_lets_a_burst_through_then_queues() -> None:
    limiter = LocalRateLimiter(requests_per_minute=60)  # 1/s, a burst of BURST_SECONDS
    burst = int(BURST_SECONDS)
    waits = [limiter.reserve(1).budget_wait for _ in range(burst + 3)]
    assert waits[:burst] == [0.0] * burst
    # Each queued request waits one interval (1 s) longer than the one before it.
    for n, wait in enumerate(waits[burst:], start=1):
        assert n - 0.1 < wait <= n


def test_two_runs_share_one_request_budget(limiters: Any) -> None:
    model = config(requests_per_minute=60)
    first, second = limiters(model), limiters(model)
    burst = int(BURST_SECONDS)
    assert [first.reserve(1).budget_wait for _ in range(burst)] == [0.0] * burst
    # The other run's first request finds the bucket this one emptied.
    assert 0.9 < second.reserve(1).budget_wait <= 1.0
    assert 1.9 < first.reserve(1).budget_wait <= 2.0


def test_two_runs_share_one_token_budget(limiters: Any) -> None:
    model = config(tokens_per_minute=60_000)  # 1,000 tokens/s, a bucket of 2,000
    first, second = limiters(model), limiters(model)
    assert first.reserve(2_000).budget_wait == 0.0
    assert 2.9 < second.reserve(3_000).budget_wait <= 3.0  # 3,000 tokens behind: 3 s


def test_another_model_or_endpoint_has_its_own_bucket(limiters: Any) -> None:
    limiters(config(requests_per_minute=60)).reserve(100)
    other_model = limiters(config(name="text-embedding-3-large", requests_per_minute=60))
    other_host = limiters(config("http://10.0.0.1/v1", requests_per_minute=60))
    assert other_model.reserve(1).budget_wait == 0.0
    assert other_host.reserve(1).budget_wait == 0.0


def test_a_pause_reaches_every_run(limiters: Any) -> None:
    first, second = limiters(config()), limiters(config())
    assert second.reserve(10).pause_wait == 0.0
    first.pause(30)
    assert 25 < second.reserve(10).pause_wait <= 30
    first.pause(5)  # a shorter pause never shortens a longer one
    assert 25 < second.reserve(10).pause_wait <= 30


def test_a_429_in_one_run_pauses_the_others(db_url: str, limiters: Any) -> None:
    model_fields: dict[str, Any] = {}
    with FakeEmbeddingsServer(dims=8) as server:
        model = config(server.base_url, **model_fields)
        provider = build_provider(model, PostgresRateLimiter(db_url, model))
        assert isinstance(provider, OpenAIProvider)
        waits: list[float] = []
        provider.sleep = waits.append
        server.fail_next("429", retry_after="20")
        try:
            provider.embed(["one row"])
        finally:
            provider.close()
    (own,) = waits  # the run that got the 429 waited once (its retry), not twice
    assert own >= 20
    assert 15 < limiters(model).reserve(1).pause_wait <= 20  # another run waits as well


def test_spent_budget_headers_slow_the_next_request() -> None:
    """x-ratelimit-remaining-* at 0: the next request waits for x-ratelimit-reset-*."""
    with FakeEmbeddingsServer(dims=8, remaining=(0, 0, "3s")) as server:
        provider = build_provider(config(server.base_url))
        assert isinstance(provider, OpenAIProvider)
        waits: list[float] = []
        provider.sleep = waits.append
        try:
            provider.embed(["first"])
            assert waits == []
            provider.embed(["second"])
        finally:
            provider.close()
    (wait,) = waits
    assert 2.5 < wait <= 3.0


def test_budgets_pace_the_provider(db_url: str) -> None:
    """A tokens_per_minute budget: requests beyond the bucket wait their turn, in order."""
    with FakeEmbeddingsServer(dims=8) as server:
        model = config(server.base_url, tokens_per_minute=600, max_inputs_per_request=1)
        provider = build_provider(model, PostgresRateLimiter(db_url, model))
        assert isinstance(provider, OpenAIProvider)
        waits: list[float] = []
        provider.sleep = waits.append
        texts = ["word " * 9 for _ in range(4)]  # 10 tokens each; 10 tokens/s, bucket of 20
        try:
            provider.embed(texts)
        finally:
            provider.close()
        assert len(server.requests) == 4
    # two fit in the bucket; the third waits ~1 s, the fourth ~2 s (nothing slept here)
    assert len(waits) == 2 and 0.5 < waits[0] < waits[1] <= 2.0
