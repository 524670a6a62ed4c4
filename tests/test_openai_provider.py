"""The `openai` provider against a real HTTP server on 127.0.0.1 (tests/openai_server.py).

Everything goes through the public path a user takes: `build_provider(ModelConfig(...))`
and `provider.embed(texts)`. Retries use the provider's real backoff (at most ~0.5 s per
retry at the retry counts used here); the only other waiting is the server's bounded "hang".
"""

from __future__ import annotations

import email.utils
import itertools
import logging
import math
import random
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))

from openai_server import FakeEmbeddingsServer, FaultKind, closed_port, token_count

from embedding_assets.config import ModelConfig, parse_config
from embedding_assets.errors import (
    ConfigError,
    DimensionMismatchError,
    EndpointUnavailableError,
    ProviderError,
)
from embedding_assets.providers import EmbeddingProvider, build_provider
from embedding_assets.providers.openai import (
    MALFORMED_ATTEMPTS,
    RATE_LIMIT_JITTER,
    RATE_LIMIT_MAX_WAIT,
    RATE_LIMITED_PER_RETRY,
    OpenAIProvider,
    parse_duration,
    parse_retry_after,
    rate_limit_wait,
)
from embedding_assets.providers.tokens import openai_encoding
from embedding_assets.reports.tokens import token_counter

MODEL = "text-embedding-3-small"
OTHER_MODEL = "nomic-embed-text"  # no known tokenizer: the bytes heuristic
DIMS = 8
KEY_ENV = "EMBED_TEST_API_KEY"
FAKE_KEY = "sk-test-SECRET123"
# Distinctive text that must never show up in an error message or a log line.
SENTINEL = "CONFIDENTIAL-ROW-7f3a9c: patient Jan Kowalski, diagnosis withheld"
PROVIDER_LOGGER = "embedding_assets.providers.openai"

MakeProvider = Callable[..., EmbeddingProvider]


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No real key, endpoint or proxy from the developer's shell can leak into a test."""
    for var in (
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_ORG_ID",
        "OPENAI_PROJECT_ID",
        KEY_ENV,
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")


@pytest.fixture
def server() -> Iterator[FakeEmbeddingsServer]:
    with FakeEmbeddingsServer(dims=DIMS) as srv:
        yield srv


@pytest.fixture
def make_provider() -> Iterator[MakeProvider]:
    """Build providers through the public factory; close them all afterwards."""
    built: list[EmbeddingProvider] = []

    def make(base_url: str | None, **overrides: Any) -> EmbeddingProvider:
        fields: dict[str, Any] = {
            "provider": "openai",
            "name": MODEL,
            "dimensions": DIMS,
            "base_url": base_url,
            "api_key_env": KEY_ENV,
            "max_retries": 0,
            "timeout_seconds": 5.0,
        }
        fields.update(overrides)
        provider = build_provider(ModelConfig(**fields))
        built.append(provider)
        return provider

    yield make
    for provider in built:
        provider.close()


def expected(
    server: FakeEmbeddingsServer, texts: list[str], dims: int = DIMS, model: str = MODEL
) -> np.ndarray:
    """What the provider should return for `texts` served by `server` (unit-normalised)."""
    rows = np.vstack([server.vector(t, model, dims) for t in texts]).astype(np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def texts_of(n: int) -> list[str]:
    return [f"document number {i}: some text about topic {i % 4}" for i in range(n)]


def cl100k(text: str) -> int:
    """Tokens of `text` as OpenAI counts them: the same tokenizer, called directly."""
    encoding = openai_encoding()
    assert encoding is not None
    return len(encoding.encode_ordinary(text))


def words(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    vocabulary = ["vector", "PostgreSQL", "Zażółć", "東京", "😀", "12345678", "the", "a,b;c"]
    return " ".join(rng.choice(vocabulary) for _ in range(n_words))


def recorded_waits(provider: EmbeddingProvider) -> list[float]:
    """Replace the provider's sleep: the waits are recorded, none is taken."""
    assert isinstance(provider, OpenAIProvider)
    waits: list[float] = []
    provider.sleep = waits.append
    return waits


# -- happy path ------------------------------------------------------------------------------


def test_embeds_in_order_across_requests_and_reports_tokens(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    texts = texts_of(10)
    # One request at a time, so that the server sees them in the order they were packed.
    provider = make_provider(server.base_url, max_inputs_per_request=3, max_concurrent_requests=1)

    batch = provider.embed(texts)

    assert batch.vectors.shape == (10, DIMS)
    assert batch.vectors.dtype == np.float32
    assert batch.vectors.flags.writeable and batch.vectors.flags.c_contiguous
    np.testing.assert_allclose(batch.vectors, expected(server, texts), atol=1e-6)
    requests = server.requests
    assert all(r.encoding_format == "base64" for r in requests)
    assert len(requests) == math.ceil(10 / 3)
    assert [r.n_inputs for r in requests] == [3, 3, 3, 1]
    assert all(r.n_inputs <= 3 for r in requests)
    assert [t for r in requests for t in r.inputs] == texts  # sent in order, none twice
    assert all(r.model == MODEL and r.path == "/v1/embeddings" for r in requests)
    assert batch.tokens == sum(token_count(t) for t in texts) == server.tokens_served
    assert batch.truncated == 0


def test_order_follows_item_index_not_response_order(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    texts = texts_of(5)
    server.fail_next("shuffle")
    batch = make_provider(server.base_url).embed(texts)
    np.testing.assert_allclose(batch.vectors, expected(server, texts), atol=1e-6)


def test_normalize_true_returns_unit_vectors_and_false_keeps_the_servers(
    make_provider: MakeProvider,
) -> None:
    texts = texts_of(4)
    with FakeEmbeddingsServer(dims=DIMS, scale=3.0) as server:
        normalized = make_provider(server.base_url, normalize=True).embed(texts).vectors
        raw = make_provider(server.base_url, normalize=False).embed(texts).vectors

    np.testing.assert_allclose(np.linalg.norm(normalized, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(raw, axis=1), 3.0, atol=1e-5)
    np.testing.assert_allclose(normalized * 3.0, raw, atol=1e-5)


def test_requests_stay_within_the_token_budget(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    """Packed by the model's own token counts: no request over the budget, none split early."""
    texts = [words(5 + i % 23, seed=i) for i in range(60)]
    budget = 120
    provider = make_provider(
        server.base_url, max_tokens_per_request=budget, max_concurrent_requests=1
    )

    batch = provider.embed(texts)

    requests = server.requests
    assert [t for r in requests for t in r.inputs] == texts  # in order, none cut or repeated
    sizes = [sum(cl100k(t) for t in r.inputs) for r in requests]
    assert max(sizes) <= budget
    for request, following in itertools.pairwise(requests):
        # Greedy: the next request's first text did not fit into this one.
        assert sum(cl100k(t) for t in request.inputs) + cl100k(following.inputs[0]) > budget
    np.testing.assert_allclose(batch.vectors, expected(server, texts), atol=1e-6)


def test_default_budgets_hold_for_large_batches(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    """2048 inputs and 300,000 tokens per request, 8192 per input: OpenAI's own limits."""
    small = [f"row {i}" for i in range(3000)]
    make_provider(server.base_url, max_concurrent_requests=1).embed(small)
    assert [r.n_inputs for r in server.requests] == [2048, 952]

    large = [words(9000, seed=i) for i in range(45)]  # > 8192 tokens each: cut to 8192
    batch = make_provider(server.base_url).embed(large)

    requests = server.requests[2:]
    assert batch.truncated == len(large)
    assert all(cl100k(t) <= 8192 for r in requests for t in r.inputs)
    assert all(sum(cl100k(t) for t in r.inputs) <= 300_000 for r in requests)
    assert len(requests) == 2  # 45 x ~8192 = ~369k tokens: two requests, not one


def test_byte_budget_for_a_model_without_a_known_tokenizer(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    # Budget: 10 tokens x 2 bytes = 20 bytes per request; each text is 8 bytes.
    texts = [f"text-{i:03d}" for i in range(5)]
    # One request in flight: with more, the server sees them in arrival order.
    provider = make_provider(
        server.base_url, name=OTHER_MODEL, max_tokens_per_request=10, max_concurrent_requests=1
    )

    batch = provider.embed(texts)

    assert [r.n_inputs for r in server.requests] == [2, 2, 1]
    assert all(sum(len(t.encode()) for t in r.inputs) <= 20 for r in server.requests)
    np.testing.assert_allclose(batch.vectors, expected(server, texts, model=OTHER_MODEL), atol=1e-6)


def test_tokens_unknown_when_the_server_reports_no_usage(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("no_usage")
    batch = make_provider(server.base_url, max_inputs_per_request=2).embed(texts_of(4))
    assert batch.tokens is None
    assert batch.vectors.shape == (4, DIMS)


def test_no_texts_means_no_request(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    batch = make_provider(server.base_url).embed([])
    assert batch.vectors.shape == (0, DIMS)
    assert server.requests == []


# -- transient failures are retried ----------------------------------------------------------


def test_rate_limit_is_retried_then_succeeds(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    texts = texts_of(3)
    server.fail_next("429")

    batch = make_provider(server.base_url, max_retries=3).embed(texts)

    np.testing.assert_allclose(batch.vectors, expected(server, texts), atol=1e-6)
    assert [r.fault for r in server.requests] == ["429", None]
    assert server.requests[0].inputs == server.requests[1].inputs == texts


def test_rate_limit_without_a_wait_beyond_max_retries_is_a_provider_error(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("429", times=5, retry_after=None)  # says nothing about when: an outage
    with pytest.raises(ProviderError, match="429") as info:
        make_provider(server.base_url, max_retries=1).embed(texts_of(2))
    assert len(server.requests) == 2
    assert server.base_url in str(info.value)
    assert "after 2 attempts" in str(info.value)


def test_server_errors_are_retried_up_to_max_retries(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("status", times=5, status=500)

    with pytest.raises(ProviderError) as info:
        make_provider(server.base_url, max_retries=2).embed(texts_of(2))

    assert len(server.requests) == 3  # 1 attempt + 2 retries, then give up
    assert server.pending_faults == 2
    message = str(info.value)
    assert server.base_url in message
    assert "HTTP 500" in message
    assert MODEL in message


def test_server_error_then_success(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    texts = texts_of(2)
    server.fail_next("status", status=503)
    batch = make_provider(server.base_url, max_retries=1).embed(texts)
    np.testing.assert_allclose(batch.vectors, expected(server, texts), atol=1e-6)
    assert len(server.requests) == 2


def test_client_errors_are_not_retried(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("status", status=400)
    with pytest.raises(ProviderError, match="HTTP 400"):
        make_provider(server.base_url, max_retries=3).embed(texts_of(2))
    assert len(server.requests) == 1


def test_timeout_is_retried_then_succeeds(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    texts = texts_of(2)
    server.fail_next("hang", seconds=5)
    start = time.monotonic()

    batch = make_provider(server.base_url, max_retries=1, timeout_seconds=0.5).embed(texts)

    assert time.monotonic() - start < 4  # the client gave up on the hang; it did not wait 5 s
    np.testing.assert_allclose(batch.vectors, expected(server, texts), atol=1e-6)
    assert [r.fault for r in server.requests] == ["hang", None]


def test_timeout_without_retries_is_cannot_reach(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("hang", seconds=5)
    with pytest.raises(ProviderError, match="cannot reach") as info:
        make_provider(server.base_url, max_retries=0, timeout_seconds=0.5).embed(texts_of(1))
    assert "Timeout" in str(info.value)
    assert server.base_url in str(info.value)
    assert len(server.requests) == 1


def test_dropped_connection_is_retried(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    texts = texts_of(2)
    server.fail_next("drop")
    batch = make_provider(server.base_url, max_retries=1).embed(texts)
    np.testing.assert_allclose(batch.vectors, expected(server, texts), atol=1e-6)
    assert [r.fault for r in server.requests] == ["drop", None]


def test_unreachable_endpoint_fails_after_all_attempts_without_the_key(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    make_provider: MakeProvider,
) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    caplog.set_level(logging.WARNING, logger=PROVIDER_LOGGER)
    base_url = f"http://127.0.0.1:{closed_port()}/v1"

    with pytest.raises(ProviderError) as info:
        make_provider(base_url, max_retries=1, timeout_seconds=2.0).embed([SENTINEL])

    message = str(info.value)
    assert "cannot reach" in message
    assert base_url in message
    assert "after 2 attempts" in message
    backoffs = [r for r in caplog.records if "backing off" in r.getMessage()]
    assert len(backoffs) == 1  # max_retries=1: one retry, so max_retries + 1 attempts
    assert FAKE_KEY not in message and SENTINEL not in message
    assert FAKE_KEY not in caplog.text and SENTINEL not in caplog.text
    assert info.value.__cause__ is None


# -- a 429 is waited out as long as the server asks ---------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("1s", 1.0),
        ("6m0s", 360.0),
        ("20ms", 0.02),
        ("1h2m3.5s", 3723.5),
        ("0.5s", 0.5),
        ("2", 2.0),
        ("1.5", 1.5),
        ("", None),
        ("soon", None),
        ("5 s", None),
        ("1x", None),
    ],
)
def test_reset_durations(value: str, seconds: float | None) -> None:
    assert parse_duration(value) == (pytest.approx(seconds) if seconds is not None else None)


def test_retry_after_takes_seconds_or_an_http_date() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("7", now) == 7.0
    in_30s = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(in_30s, now) == pytest.approx(30.0)
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now) < 0  # past: no wait
    assert parse_retry_after("tomorrow", now) is None


@pytest.mark.parametrize(
    ("headers", "wait"),
    [
        ({}, None),
        ({"retry-after": "0"}, 0.0),
        ({"retry-after": "3"}, 3.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"x-ratelimit-reset-requests": "20ms"}, 0.02),
        ({"x-ratelimit-reset-tokens": "6m0s"}, RATE_LIMIT_MAX_WAIT),  # capped
        ({"retry-after": "1", "x-ratelimit-reset-tokens": "2.5s"}, 2.5),  # the longest hint
        ({"retry-after": "garbage"}, None),
        ({"retry-after": "garbage", "x-ratelimit-reset-requests": "1s"}, 1.0),
        ({"retry-after": "-5"}, 0.0),
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),
    ],
)
def test_rate_limit_wait_from_headers(headers: dict[str, str], wait: float | None) -> None:
    got = rate_limit_wait(headers, now=1_800_000_000.0)
    assert got == (pytest.approx(wait) if wait is not None else None)


@pytest.mark.parametrize(
    ("headers", "low"),
    [
        ({"retry_after": "2"}, 2.0),
        ({"retry_after": None, "reset_requests": "1s", "reset_tokens": "1.5s"}, 1.5),
        ({"retry_after": None, "reset_tokens": "20ms"}, 0.02),
        ({"retry_after": "0", "reset_tokens": "6m0s"}, RATE_LIMIT_MAX_WAIT),
    ],
)
def test_a_429_is_waited_out_as_long_as_its_headers_ask(
    headers: dict[str, Any],
    low: float,
    caplog: pytest.LogCaptureFixture,
    server: FakeEmbeddingsServer,
    make_provider: MakeProvider,
) -> None:
    caplog.set_level(logging.WARNING, logger=PROVIDER_LOGGER)
    texts = texts_of(2)
    server.fail_next("429", **headers)
    provider = make_provider(server.base_url, max_retries=1)
    waits = recorded_waits(provider)

    batch = provider.embed(texts)

    np.testing.assert_allclose(batch.vectors, expected(server, texts), atol=1e-6)
    (wait,) = waits
    assert low <= wait <= low * (1 + RATE_LIMIT_JITTER)  # at least the ask, jittered upwards
    assert f"backing off {wait:.2f} s" in caplog.text


def test_retry_after_as_an_http_date_is_honoured(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("429", retry_after=email.utils.formatdate(time.time() + 20, usegmt=True))
    provider = make_provider(server.base_url, max_retries=1)
    waits = recorded_waits(provider)
    provider.embed(texts_of(1))
    (wait,) = waits
    assert 18 <= wait <= 20 * (1 + RATE_LIMIT_JITTER) + 1  # HTTP dates have 1 s resolution


def test_a_429_without_headers_backs_off_exponentially(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("429", times=3, retry_after=None)
    provider = make_provider(server.base_url, max_retries=3)
    waits = recorded_waits(provider)
    provider.embed(texts_of(1))
    assert len(waits) == 3 and sum(waits) > 0
    assert all(0 <= w <= 0.5 * 2**i for i, w in enumerate(waits))  # wait_random_exponential


def test_a_429_storm_does_not_fail_while_the_server_says_when_to_return(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    """Each paced 429 costs a tenth of a retry: max_retries=3 rides out 30 of them, where
    outages would have failed after 4 attempts."""
    texts = texts_of(2)
    storm = 3 * RATE_LIMITED_PER_RETRY
    server.fail_next("429", times=storm, retry_after="1")
    provider = make_provider(server.base_url, max_retries=3)
    waits = recorded_waits(provider)

    batch = provider.embed(texts)

    np.testing.assert_allclose(batch.vectors, expected(server, texts), atol=1e-6)
    assert len(server.requests) == storm + 1
    assert len(waits) == storm and min(waits) >= 1.0


def test_an_endless_429_storm_is_still_bounded(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    storm = 3 * RATE_LIMITED_PER_RETRY
    server.fail_next("429", times=storm + 5, retry_after="1")
    provider = make_provider(server.base_url, max_retries=3)
    recorded_waits(provider)

    with pytest.raises(EndpointUnavailableError, match="429") as info:
        provider.embed(texts_of(2))

    assert len(server.requests) == storm + 1
    assert f"after {storm + 1} attempts" in str(info.value)


def test_paced_429s_and_outages_share_one_budget(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    # max_retries=2 is 2 outages' worth. Each paced 429 costs a tenth: 1 + 0.5 + 1 > 2, so
    # the second 503 ends it, where alone it would have been retried.
    server.fail_next("status", status=503)
    server.fail_next("429", times=5, retry_after="0")
    server.fail_next("status", status=503)
    server.fail_next("status", status=503)
    provider = make_provider(server.base_url, max_retries=2)
    recorded_waits(provider)

    with pytest.raises(EndpointUnavailableError, match="503"):
        provider.embed(texts_of(2))

    assert [r.fault for r in server.requests] == ["status", *["429"] * 5, "status"]


def test_max_retries_zero_still_means_no_retry_for_a_paced_429(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("429", retry_after="1")
    provider = make_provider(server.base_url, max_retries=0)
    waits = recorded_waits(provider)
    with pytest.raises(EndpointUnavailableError, match="429"):
        provider.embed(texts_of(1))
    assert len(server.requests) == 1 and waits == []


def test_an_exhausted_quota_is_not_retried(
    monkeypatch: pytest.MonkeyPatch, server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    """OpenAI's 429 insufficient_quota heals only with billing: fail at once, say why."""
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    server.fail_next("429", times=5, retry_after="1", code="insufficient_quota")
    provider = make_provider(server.base_url, max_retries=6)
    waits = recorded_waits(provider)

    with pytest.raises(ProviderError, match="insufficient_quota") as info:
        provider.embed(texts_of(1))

    assert type(info.value) is ProviderError  # not "unavailable": a retry later will not help
    assert len(server.requests) == 1 and waits == []
    assert f"${KEY_ENV}" in str(info.value) and FAKE_KEY not in str(info.value)


# -- responses that must never be written ----------------------------------------------------


def test_wrong_dimension_response_is_rejected(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("wrong_dims", dims=5)
    with pytest.raises(DimensionMismatchError) as info:
        make_provider(server.base_url).embed(texts_of(3))
    message = str(info.value)
    assert "5-dimensional" in message
    assert f"configured for {DIMS}" in message
    assert "model.dimensions" in message
    assert "send_dimensions" in message


def test_model_with_more_dimensions_than_configured(make_provider: MakeProvider) -> None:
    """A 16-d model configured as 8-d: rejected unless `dimensions` is sent to shorten it."""
    texts = texts_of(3)
    with FakeEmbeddingsServer(dims=16) as server:
        with pytest.raises(DimensionMismatchError) as info:
            make_provider(server.base_url, send_dimensions="never").embed(texts)
        assert "16-dimensional" in str(info.value)
        assert f"configured for {DIMS}" in str(info.value)

        batch = make_provider(server.base_url, send_dimensions="always").embed(texts)
        assert server.requests[-1].dimensions == DIMS
        np.testing.assert_allclose(batch.vectors, expected(server, texts, DIMS), atol=1e-6)


def test_mixed_dimensions_in_one_response_are_rejected(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("mixed_dims")
    with pytest.raises(ProviderError, match="mixed dimensions"):
        make_provider(server.base_url).embed(texts_of(3))


def test_fewer_embeddings_than_inputs_are_rejected(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("fewer")
    with pytest.raises(ProviderError, match="2 embeddings for 3 inputs"):
        make_provider(server.base_url).embed(texts_of(3))


def test_non_finite_values_are_rejected(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("nan")
    with pytest.raises(ProviderError, match="NaN"):
        make_provider(server.base_url).embed(texts_of(3))


def test_bad_response_in_a_later_request_fails_the_whole_call(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("shuffle")  # request 1: fine
    server.fail_next("wrong_dims", dims=4)  # request 2: bad
    provider = make_provider(server.base_url, max_inputs_per_request=2, max_concurrent_requests=1)
    with pytest.raises(DimensionMismatchError):
        provider.embed(texts_of(6))
    assert len(server.requests) == 2  # stopped before the third request


def test_empty_response_is_a_provider_error(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("empty")
    with pytest.raises(ProviderError):
        make_provider(server.base_url).embed(texts_of(3))


def test_non_json_response_is_a_provider_error(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("not_json")
    with pytest.raises(ProviderError):
        make_provider(server.base_url).embed(texts_of(3))


def test_duplicate_item_index_is_rejected(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    # Items come back with indices [0, 1, 0]: the count is right, but input 2 has no vector.
    # Accepting it would store text 0's vector for row 1 and text 1's vector for row 2.
    server.fail_next("duplicate_index")
    with pytest.raises(ProviderError):
        make_provider(server.base_url).embed(texts_of(3))


# -- a malformed response is retried within max_retries ----------------------------------------


@pytest.mark.parametrize(
    ("kind", "dims"),
    [
        ("not_json", None),  # a proxy's error page
        ("bad_base64", None),
        ("no_index", None),  # used to escape as a raw TypeError from the sort
        ("wrong_dims", 5),
        ("mixed_dims", None),
        ("fewer", None),
        ("empty", None),
        ("duplicate_index", None),
        ("nan", None),
    ],
)
def test_one_malformed_response_is_retried_and_the_batch_succeeds(
    kind: FaultKind,
    dims: int | None,
    caplog: pytest.LogCaptureFixture,
    server: FakeEmbeddingsServer,
    make_provider: MakeProvider,
) -> None:
    caplog.set_level(logging.WARNING, logger=PROVIDER_LOGGER)
    texts = [SENTINEL, *texts_of(3)]
    server.fail_next(kind, dims=dims)

    batch = make_provider(server.base_url, max_retries=1).embed(texts)

    np.testing.assert_allclose(batch.vectors, expected(server, texts), atol=1e-6)
    assert [r.fault for r in server.requests] == [kind, None]
    assert server.requests[0].inputs == server.requests[1].inputs == texts
    (backoff,) = [r.getMessage() for r in caplog.records if "backing off" in r.getMessage()]
    assert "malformed response" in backoff
    assert SENTINEL not in caplog.text and "upstream proxy error" not in caplog.text


def test_persistent_wrong_dimension_fails_after_max_retries_plus_one_attempts(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("wrong_dims", times=10, dims=5)  # a configuration error: every answer

    with pytest.raises(DimensionMismatchError) as info:
        make_provider(server.base_url, max_retries=2).embed(texts_of(3))

    assert len(server.requests) == 3  # 1 attempt + 2 retries, then the clear error
    assert server.pending_faults == 7
    assert (info.value.returned, info.value.configured) == (5, DIMS)
    message = str(info.value)
    assert "5-dimensional" in message and f"configured for {DIMS}" in message
    assert "model.dimensions" in message and "send_dimensions" in message
    assert info.value.__cause__ is None


def test_a_wrong_dimension_fails_fast_even_with_many_retries_allowed(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    """A configuration error answers the same way every time: a few attempts, not the
    whole transient-error budget (max_retries=6 is minutes of backoff)."""
    server.fail_next("wrong_dims", times=10, dims=5)

    with pytest.raises(DimensionMismatchError):
        make_provider(server.base_url, max_retries=6).embed(texts_of(3))

    assert len(server.requests) == MALFORMED_ATTEMPTS


def test_persistent_garbage_fails_naming_the_problem(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    server: FakeEmbeddingsServer,
    make_provider: MakeProvider,
) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    caplog.set_level(logging.WARNING, logger=PROVIDER_LOGGER)
    server.fail_next("not_json", times=10)  # the page echoes the first input

    with pytest.raises(ProviderError) as info:
        make_provider(server.base_url, max_retries=2).embed([SENTINEL, "another row"])

    assert len(server.requests) == 3
    message = str(info.value)
    assert "not an embeddings list" in message
    assert server.base_url in message and "model.base_url" in message
    backoffs = [r for r in caplog.records if "backing off" in r.getMessage()]
    assert len(backoffs) == 2
    rendered = f"{message} {info.value!r} {caplog.text}"
    assert SENTINEL not in rendered and "upstream proxy error" not in rendered
    assert FAKE_KEY not in rendered


@pytest.mark.parametrize(
    ("kind", "match"),
    [
        ("no_index", "one to one"),
        ("duplicate_index", "one to one"),
        ("fewer", "2 embeddings for 3 inputs"),
        ("mixed_dims", "mixed dimensions"),
        ("nan", "NaN"),
        ("empty", "not an embeddings list"),
        ("bad_base64", "not an embeddings list"),
    ],
)
def test_persistent_malformed_response_fails_with_its_clear_error(
    kind: FaultKind, match: str, server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next(kind, times=5)
    with pytest.raises(ProviderError, match=match) as info:
        make_provider(server.base_url, max_retries=1).embed(texts_of(3))
    assert type(info.value) is ProviderError  # neither a raw TypeError nor "unavailable"
    assert len(server.requests) == 2


def test_malformed_responses_and_rate_limits_share_the_attempt_budget(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    server.fail_next("not_json")
    server.fail_next("429", times=5, retry_after=None)
    with pytest.raises(EndpointUnavailableError, match="429"):
        make_provider(server.base_url, max_retries=2).embed(texts_of(2))
    assert [r.fault for r in server.requests] == ["not_json", "429", "429"]


# -- servers that ignore encoding_format ---------------------------------------------------------


@pytest.fixture
def float_server() -> Iterator[FakeEmbeddingsServer]:
    """An OpenAI-compatible server that answers float lists even when asked for base64."""
    with FakeEmbeddingsServer(dims=DIMS, ignore_encoding_format=True) as srv:
        yield srv


def test_float_list_answers_are_decoded_too(
    float_server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    texts = texts_of(7)
    float_server.fail_next("shuffle")
    batch = make_provider(float_server.base_url, max_inputs_per_request=4).embed(texts)
    assert [r.encoding_format for r in float_server.requests] == ["base64", "base64"]
    assert batch.vectors.dtype == np.float32 and batch.vectors.flags.writeable
    np.testing.assert_allclose(batch.vectors, expected(float_server, texts), atol=1e-6)
    assert batch.tokens == sum(token_count(t) for t in texts)


@pytest.mark.parametrize(
    ("kind", "error", "match"),
    [
        ("wrong_dims", DimensionMismatchError, "5-dimensional"),
        ("mixed_dims", ProviderError, "mixed dimensions"),
        ("fewer", ProviderError, "2 embeddings for 3 inputs"),
        ("nan", ProviderError, "NaN"),
        ("no_index", ProviderError, "one to one"),
        ("bad_base64", ProviderError, "not an embeddings list"),
    ],
)
def test_float_list_answers_get_every_check(
    kind: FaultKind,
    error: type[Exception],
    match: str,
    float_server: FakeEmbeddingsServer,
    make_provider: MakeProvider,
) -> None:
    float_server.fail_next(kind, times=5, dims=5)
    with pytest.raises(error, match=match):
        make_provider(float_server.base_url, max_retries=1).embed(texts_of(3))
    assert len(float_server.requests) == 2  # retried once as malformed, then the clear error


# -- nothing secret in errors ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "status", "error"),
    [
        ("status", 500, ProviderError),
        ("status", 400, ProviderError),
        ("status", 422, ProviderError),
        ("429", 429, ProviderError),
        ("wrong_dims", 0, DimensionMismatchError),
        ("mixed_dims", 0, ProviderError),
        ("fewer", 0, ProviderError),
        ("nan", 0, ProviderError),
        ("not_json", 0, ProviderError),
        ("no_index", 0, ProviderError),
        ("hang", 0, ProviderError),
    ],
)
def test_errors_never_contain_the_texts_or_the_key(
    kind: FaultKind,
    status: int,
    error: type[Exception],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    server: FakeEmbeddingsServer,
    make_provider: MakeProvider,
) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    caplog.set_level(logging.WARNING)
    server.fail_next(kind, status=status or 500, seconds=5)  # error bodies echo the input
    provider = make_provider(server.base_url, max_retries=0, timeout_seconds=0.5)

    with pytest.raises(error) as info:
        provider.embed([SENTINEL, "another row"])

    assert server.requests[0].inputs[0] == SENTINEL  # the server did see it
    rendered = f"{info.value!s} {info.value!r}"
    assert SENTINEL not in rendered and "Kowalski" not in rendered
    assert FAKE_KEY not in rendered and "SECRET123" not in rendered
    assert SENTINEL not in caplog.text and FAKE_KEY not in caplog.text


# -- the API key -----------------------------------------------------------------------------


def test_api_key_comes_from_the_named_env_var_as_bearer(
    monkeypatch: pytest.MonkeyPatch, make_provider: MakeProvider
) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with FakeEmbeddingsServer(dims=DIMS, api_key=FAKE_KEY) as server:
        make_provider(server.base_url, max_inputs_per_request=1).embed(texts_of(2))
        assert [r.authorization for r in server.requests] == [f"Bearer {FAKE_KEY}"] * 2


def test_rejected_key_names_the_variable_not_the_key(
    monkeypatch: pytest.MonkeyPatch, make_provider: MakeProvider
) -> None:
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    with FakeEmbeddingsServer(dims=DIMS, api_key="sk-the-right-one") as server:
        with pytest.raises(ProviderError) as info:
            make_provider(server.base_url, max_retries=3).embed(texts_of(1))
        assert len(server.requests) == 1  # a 401 is not retried
    message = str(info.value)
    assert f"${KEY_ENV}" in message
    assert "401" in message
    assert FAKE_KEY not in message


def test_local_server_without_a_key_gets_a_placeholder(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    make_provider(server.base_url).embed(texts_of(1))
    authorization = server.requests[0].authorization
    assert authorization is not None and authorization.startswith("Bearer ")
    assert authorization != "Bearer "


def test_missing_key_without_base_url_is_a_config_error(make_provider: MakeProvider) -> None:
    with pytest.raises(ConfigError) as info:
        make_provider(None)
    assert f"${KEY_ENV}" in str(info.value)
    assert "api_key_env" in str(info.value)


def _spec(model: dict[str, object]) -> dict[str, object]:
    return {
        "spaces": [
            {
                "name": "docs_openai",
                "table": "docs",
                "text_column": "body",
                "target_column": "embedding_openai",
                "model": model,
            }
        ]
    }


def test_config_refuses_a_key_in_api_key_env() -> None:
    model = {"provider": "openai", "name": MODEL, "dimensions": DIMS, "api_key_env": FAKE_KEY}
    with pytest.raises(ConfigError) as info:
        parse_config(_spec(model))
    message = str(info.value)
    assert "api_key_env" in message
    assert "NAME of an environment variable" in message
    assert FAKE_KEY not in message and "SECRET123" not in message

    model["api_key_env"] = KEY_ENV
    assert parse_config(_spec(model)).spaces[0].model.api_key_env == KEY_ENV


# -- send_dimensions -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "name", "sent"),
    [
        ("never", "text-embedding-3-small", False),
        ("always", "nomic-embed-text", True),
        ("always", "text-embedding-3-small", True),
        ("auto", "text-embedding-3-small", True),
        ("auto", "text-embedding-3-large", True),
        ("auto", "nomic-embed-text", False),
        ("auto", "text-embedding-ada-002", False),
    ],
)
def test_send_dimensions(
    mode: str,
    name: str,
    sent: bool,
    server: FakeEmbeddingsServer,
    make_provider: MakeProvider,
) -> None:
    make_provider(server.base_url, name=name, send_dimensions=mode).embed(texts_of(2))
    (request,) = server.requests
    assert request.model == name
    assert request.dimensions_sent is sent
    assert request.dimensions == (DIMS if sent else None)


# -- truncation ------------------------------------------------------------------------------


def test_without_a_known_tokenizer_inputs_are_cut_by_bytes(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    # max_input_tokens=10 -> inputs are cut at 40 UTF-8 bytes, never inside a character.
    texts = [
        "a" * 41,  # cut to 40
        "b" * 40,  # exactly at the limit: kept
        "ż" * 30,  # 60 bytes: cut to 20 characters
        "x" + "ż" * 30,  # the 40-byte cut falls inside a character: that character goes
        "short",
    ]
    provider = make_provider(server.base_url, name=OTHER_MODEL, max_input_tokens=10)

    batch = provider.embed(texts)

    sent = server.requests[0].inputs
    assert sent == ["a" * 40, "b" * 40, "ż" * 20, "x" + "ż" * 19, "short"]
    assert all(len(t.encode()) <= 40 for t in sent)
    assert batch.truncated == 3
    np.testing.assert_allclose(batch.vectors, expected(server, sent, model=OTHER_MODEL), atol=1e-6)


HARD_TEXTS = {
    "english": "The quick brown fox jumps over the lazy dog. ",
    "cjk": "東京都の天気は晴れです。数据库中的向量嵌入。한국어 텍스트입니다. ",
    "emoji": "😀👍🏽🇵🇱👨‍👩‍👧‍👦🤖 ",
    "digits": "31415926535897932384626433832795028841971693993751",
    "spaces": "word" + " " * 300,
    "special": "<|endoftext|> plain text that names a special token ",
}


@pytest.mark.parametrize("kind", sorted(HARD_TEXTS))
def test_inputs_are_cut_by_the_models_tokens(
    kind: str, server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    """A cut keeps a prefix of at most max_input_tokens tokens, as OpenAI counts them,
    whatever the script; texts within the limit are sent unchanged."""
    limit = 10
    unit = HARD_TEXTS[kind]
    long_text = unit * 5
    short_text = next(unit[:n] for n in range(len(unit), 0, -1) if cl100k(unit[:n]) <= limit)
    assert cl100k(long_text) > limit

    batch = make_provider(server.base_url, max_input_tokens=limit).embed([long_text, short_text])

    cut, kept = server.requests[0].inputs
    assert long_text.startswith(cut) and cut
    assert limit - 3 <= cl100k(cut) <= limit  # a cut inside a multi-token character drops it
    assert kept == short_text
    assert batch.truncated == 1
    np.testing.assert_allclose(batch.vectors, expected(server, [cut, kept]), atol=1e-6)


@pytest.mark.parametrize("kind", sorted(set(HARD_TEXTS) - {"spaces"}))
def test_a_200k_character_row_is_cut_to_8192_tokens(
    kind: str, server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    unit = HARD_TEXTS[kind]
    row = (unit * (200_000 // len(unit) + 1))[:200_000]

    batch = make_provider(server.base_url).embed([row, "a short row"])

    cut, short = server.requests[0].inputs
    assert row.startswith(cut)
    assert 8_000 <= cl100k(cut) <= 8192  # within the limit, and not far short of it
    assert short == "a short row"
    assert batch.truncated == 1


def test_rows_of_long_tokens_are_cut_by_tokens_not_bytes(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    """Runs of spaces are ~100 bytes per token: 200k characters fit in 8192 tokens and are
    sent whole (the bytes rule would cut them at 32 kB); 2M characters are cut to a prefix
    within the limit without tripping the tokenizer's own size limits."""
    unit = HARD_TEXTS["spaces"]
    fits = (unit * 700)[:200_000]
    huge = unit * 7_000
    assert cl100k(fits) <= 8192

    batch = make_provider(server.base_url).embed([fits, huge])

    sent_fits, sent_huge = server.requests[0].inputs
    assert sent_fits == fits
    assert huge.startswith(sent_huge) and 0 < cl100k(sent_huge) <= 8192
    assert batch.truncated == 1


def test_the_plan_counts_what_the_provider_sends(
    server: FakeEmbeddingsServer, make_provider: MakeProvider
) -> None:
    """reports/tokens.py counts with the provider's own rules: cut rows count as cut."""
    texts = [HARD_TEXTS["emoji"] * 40_000, *texts_of(3)]  # the first is ~600k tokens
    model = ModelConfig(provider="openai", name=MODEL, dimensions=DIMS, base_url=server.base_url)
    counter = token_counter(model, None)
    assert counter is not None and counter.exact

    make_provider(server.base_url).embed(texts)

    assert counter.count(texts) == [cl100k(t) for t in server.requests[0].inputs]


def test_fitted_counts_are_the_tokenizers_on_a_batch(make_provider: MakeProvider) -> None:
    """1,000 rows of ~600 bytes: counted exactly, none cut, no request sent."""
    provider = make_provider("http://127.0.0.1:9/v1")
    assert isinstance(provider, OpenAIProvider)
    rows = [words(90, seed=i)[:600] for i in range(1_000)]
    fitted = [provider.token_rules.fit(r, provider.max_tokens) for r in rows]
    assert [f.tokens for f in fitted] == [cl100k(r) for r in rows]
    assert not any(f.truncated for f in fitted)


# -- identity and fingerprint ----------------------------------------------------------------


def test_identity(server: FakeEmbeddingsServer, make_provider: MakeProvider) -> None:
    provider = make_provider(server.base_url, revision="2024-01", normalize=True)
    identity = provider.identity
    assert identity.provider == "openai"
    assert identity.model == MODEL
    assert identity.revision == "2024-01"
    assert identity.dimensions == DIMS
    assert identity.normalize is True
    assert identity.key == make_provider(server.base_url, revision="2024-01").identity.key
    assert identity.key != make_provider(server.base_url, revision="2024-02").identity.key
    assert server.requests == []  # building a provider sends nothing


def test_fingerprint_is_stable_and_catches_a_swapped_model(make_provider: MakeProvider) -> None:
    with FakeEmbeddingsServer(dims=DIMS) as server:
        provider = make_provider(server.base_url)
        first = provider.fingerprint()
        second = provider.fingerprint()
    with FakeEmbeddingsServer(dims=DIMS) as replica:  # the same model on another host
        on_replica = make_provider(replica.base_url).fingerprint()
    with FakeEmbeddingsServer(dims=DIMS, salt="another model") as swapped:
        impostor = make_provider(swapped.base_url)
        assert impostor.identity == provider.identity  # same name and dimension...
        other = impostor.fingerprint()

    assert first == second
    assert first.digest == second.digest and first.digest
    assert first.matches(second)
    assert first.matches(on_replica)
    assert not first.matches(other)  # ...but not the same vectors
    assert other.min_cosine(first) < 0.9
