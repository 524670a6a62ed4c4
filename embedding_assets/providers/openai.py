"""`openai`: the official client, for OpenAI and any compatible server via `base_url`.

Ollama, vLLM, TEI and infinity all speak `POST /v1/embeddings`. Requests stay inside the
API limits (2048 inputs, a token budget per request, a token limit per input), counted with
the model's own tokenizer where it is known (providers/tokens.py). Transient failures (429,
5xx, timeouts, dropped connections) are retried with exponential backoff and jitter, or as
long as a 429 asks (Retry-After, x-ratelimit-reset-*). Every response is checked for count,
order, dimension and values before a single vector can be written; a response that fails a
check is retried the same way (at most MALFORMED_ATTEMPTS times), and only one that stays
bad fails the run.

Vectors are asked for as base64 (little-endian float32) and decoded straight from the raw
body into one array per response: the client's pydantic objects and per-item float lists
cost more than the request itself against a fast endpoint. Servers that ignore
`encoding_format` and answer float lists are decoded too.
"""

from __future__ import annotations

import base64
import email.utils
import json
import logging
import os
import random
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import openai
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception,
    wait_random_exponential,
)
from tenacity.stop import stop_base
from tenacity.wait import wait_base

from ..config import ModelConfig
from ..errors import ConfigError, EndpointUnavailableError, ProviderError
from .base import EmbeddingBatch, EmbeddingProvider, ModelIdentity, check_vectors, l2_normalize
from .pacing import LocalRateLimiter, RateLimiter
from .tokens import DEFAULT_MAX_INPUT_TOKENS, rules_for

log = logging.getLogger(__name__)

_TRANSIENT = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APITimeoutError,
    openai.APIConnectionError,
)

# A malformed response gets at most this many attempts (fewer when max_retries is lower):
# a proxy's one bad answer heals on the next, a wrong model or dimension never does and
# should fail fast with its clear message.
MALFORMED_ATTEMPTS = 3

# A 429 that says when to come back is waited out for at least that long, capped here (an
# x-ratelimit-reset-tokens of "6m0s" is a full window; the limit eases long before).
RATE_LIMIT_MAX_WAIT = 60.0
# ... plus up to this fraction, so workers told the same instant do not return in lockstep.
RATE_LIMIT_JITTER = 0.1
# Such a 429 costs a tenth of a retry: the endpoint is up and pacing us, which max_retries
# (sized for outages: minutes of backoff) should not run out on after a few seconds.
RATE_LIMITED_PER_RETRY = 10

_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(h|ms|us|µs|ns|m|s)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}


def supports_dimensions_parameter(model: str) -> bool:
    """OpenAI accepts `dimensions` only for text-embedding-3 and later models."""
    return model.startswith("text-embedding-") and not model.startswith("text-embedding-ada")


# -- what a 429 asks for ------------------------------------------------------------------------


def parse_duration(value: str) -> float | None:
    """Seconds in OpenAI's reset format ("1s", "6m0s", "20ms", "1h2m3.5s"), or a bare number
    of seconds; None when it is neither."""
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNIT_SECONDS[u] for n, u in parts)


def parse_retry_after(value: str, now: float) -> float | None:
    """Retry-After: delay-seconds or an HTTP date (RFC 9110); None when it is neither."""
    value = value.strip()
    try:
        return float(value)
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return when.timestamp() - now


def rate_limit_wait(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """How long a 429's headers ask to wait (the longest hint, in [0, RATE_LIMIT_MAX_WAIT]);
    None when they name no wait."""
    now = time.time() if now is None else now
    hints: list[float | None] = []
    if "retry-after-ms" in headers:  # OpenAI's, read by its own client too
        ms = parse_duration(headers["retry-after-ms"])
        hints.append(None if ms is None else ms / 1000)
    if "retry-after" in headers:
        hints.append(parse_retry_after(headers["retry-after"], now))
    for name in ("x-ratelimit-reset-requests", "x-ratelimit-reset-tokens"):
        if name in headers:
            hints.append(parse_duration(headers[name]))
    known = [h for h in hints if h is not None and h == h]  # h == h: not NaN
    if not known:
        return None
    return min(max(0.0, *known), RATE_LIMIT_MAX_WAIT)


def spent_budget_wait(headers: Mapping[str, str], tokens: int) -> float | None:
    """After a success: how long the endpoint's x-ratelimit-remaining-* / reset-* headers say
    its budget stays spent (no request left, or fewer tokens than this request used); None
    while there is room."""
    waits: list[float] = []
    for kind, need in (("requests", 1), ("tokens", tokens)):
        remaining = headers.get(f"x-ratelimit-remaining-{kind}")
        reset = headers.get(f"x-ratelimit-reset-{kind}")
        if remaining is None or reset is None:
            continue
        try:
            left = float(remaining)
        except ValueError:
            continue
        wait = parse_duration(reset)
        if left < need and wait is not None and wait == wait:
            waits.append(min(max(0.0, wait), RATE_LIMIT_MAX_WAIT))
    return max(waits) if waits else None


def _server_wait(err: BaseException | None) -> float | None:
    """The wait a rate-limit error's headers ask for; None for anything else."""
    if not isinstance(err, openai.RateLimitError):
        return None
    return rate_limit_wait(err.response.headers)


def _out_of_quota(err: BaseException) -> bool:
    """OpenAI's 429 for an exhausted balance: no wait heals it."""
    return isinstance(err, openai.RateLimitError) and err.code == "insufficient_quota"


# -- the retry policy ---------------------------------------------------------------------------


class _MalformedResponse(Exception):
    """A response that cannot be trusted, retried like a transient failure.

    A proxy's error page or a one-off bad answer heals on a retry; a configuration error
    answers the same way every time, so `error` (the clear message) is raised once the
    attempts run out.
    """

    def __init__(self, error: ProviderError, kind: str) -> None:
        super().__init__(kind)
        self.error = error
        self.kind = kind  # an exception class name, for the log line


def _retryable(err: BaseException) -> bool:
    return isinstance(err, (*_TRANSIENT, _MalformedResponse)) and not _out_of_quota(err)


class _WaitForServer(wait_base):
    """At least what a 429 asks for (plus jitter); otherwise the fallback backoff."""

    def __init__(self, fallback: wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        asked = _server_wait(outcome.exception() if outcome else None)
        if asked is None:
            return self.fallback(retry_state)
        return asked * (1 + random.uniform(0, RATE_LIMIT_JITTER))


class _AttemptBudget(stop_base):
    """One request's retry budget: max_retries retries after outages, of which a 429 that
    says when to come back costs a tenth; malformed answers stop at MALFORMED_ATTEMPTS.

    Stateful, so built per request: tenacity calls it once per failed attempt.
    """

    def __init__(self, max_retries: int) -> None:
        self.allowance = max_retries * RATE_LIMITED_PER_RETRY
        self.spent = 0
        self.malformed = 0
        self.attempts = 0

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        err = outcome.exception() if outcome else None
        self.attempts = retry_state.attempt_number
        if isinstance(err, _MalformedResponse):
            self.malformed += 1
        paced = _server_wait(err) is not None
        self.spent += 1 if paced else RATE_LIMITED_PER_RETRY
        return self.spent > self.allowance or self.malformed >= MALFORMED_ATTEMPTS


def _log_retry(state: RetryCallState) -> None:
    err = state.outcome.exception() if state.outcome else None
    # The exception class and status only: bodies may echo inputs.
    if isinstance(err, _MalformedResponse):
        what = f"malformed response, {err.kind}"
    else:
        status = getattr(err, "status_code", None)
        what = type(err).__name__ + (f" {status}" if status else "")
    log.warning(
        "embeddings request failed (%s), attempt %d; backing off %.2f s",
        what,
        state.attempt_number,
        state.upcoming_sleep,
    )


# -- decoding -----------------------------------------------------------------------------------


def _vector(embedding: object) -> np.ndarray:
    """One item's embedding: base64 little-endian float32, or a list of numbers."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding, validate=True), dtype="<f4")
    if isinstance(embedding, list):
        return np.asarray(embedding, dtype=np.float32)
    raise TypeError("an embedding is neither base64 nor a list")


def _prompt_tokens(payload: dict[str, Any]) -> int | None:
    usage = payload.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return tokens if type(tokens) is int else None


class OpenAIProvider(EmbeddingProvider):
    """Splits each call into requests and keeps up to `max_concurrent_requests` in flight.

    The cap holds for the provider as a whole (one per process, shared by the pipeline's
    threads), paced by a `RateLimiter`: in-process by default, shared through the database
    when the resource passes one (providers/pacing.py).
    """

    def __init__(self, config: ModelConfig, limiter: RateLimiter | None = None) -> None:
        self.config = config
        # How the retry loop and the pacing wait; tests replace it to see the waits without
        # taking them.
        self.sleep: Callable[[float], None] = time.sleep
        self.limiter: RateLimiter = limiter or LocalRateLimiter.for_model(config)
        self.concurrency = config.max_concurrent_requests
        self._in_flight = threading.BoundedSemaphore(self.concurrency)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()
        api_key = os.environ.get(config.api_key_env)
        if not api_key:
            if config.base_url is None:
                raise ConfigError(
                    f"the openai provider needs an API key in ${config.api_key_env}; export it, "
                    "or set model.api_key_env to the variable that holds it"
                )
            api_key = "not-needed"  # local OpenAI-compatible servers usually ignore it
        # Retries are ours (tenacity, with jitter and logging); the client's are turned off.
        self.client = openai.OpenAI(
            api_key=api_key,
            base_url=config.base_url,
            timeout=config.timeout_seconds,
            max_retries=0,
        )
        self.send_dimensions = config.send_dimensions == "always" or (
            config.send_dimensions == "auto" and supports_dimensions_parameter(config.name)
        )
        # With `dimensions=` sent, a truncated space is shortened by the server (returned
        # normalised); otherwise the native vectors come back and build_provider cuts them.
        self.dimensions = config.stored_dimensions if self.send_dimensions else config.dimensions
        self.max_tokens = config.max_input_tokens or DEFAULT_MAX_INPUT_TOKENS
        self.token_rules = rules_for(config.name)
        self.identity = ModelIdentity(
            provider="openai",
            model=config.name,
            revision=config.revision,
            dimensions=self.dimensions,
            normalize=config.normalize,
            truncated_from=config.dimensions if self.dimensions != config.dimensions else None,
        )
        self._endpoint = config.base_url or "https://api.openai.com/v1"

    def _requests(self, texts: list[str], tokens: list[int]) -> Iterator[list[str]]:
        """Split into requests within the input-count and token budgets."""
        budget = self.config.max_tokens_per_request
        chunk: list[str] = []
        used = 0
        for text, size in zip(texts, tokens, strict=True):
            if chunk and (len(chunk) >= self.config.max_inputs_per_request or used + size > budget):
                yield chunk
                chunk, used = [], 0
            chunk.append(text)
            used += size
        if chunk:
            yield chunk

    def _call(self, inputs: list[str], tokens: int) -> tuple[np.ndarray, int | None]:
        """One request, retried until its response passes every check, or attempts run out.

        `tokens`: what the request costs against the token budget."""
        kwargs: dict[str, Any] = {
            "model": self.config.name,
            "input": inputs,
            "encoding_format": "base64",
        }
        if self.send_dimensions:
            kwargs["dimensions"] = self.dimensions
        budget = _AttemptBudget(self.config.max_retries)
        state = _RequestState(tokens)
        retrying = Retrying(
            retry=retry_if_exception(_retryable),
            wait=_WaitForServer(wait_random_exponential(multiplier=0.5, max=30)),
            stop=budget,
            before_sleep=_log_retry,
            sleep=self.sleep,
            reraise=True,
        )
        try:
            return retrying(self._attempt, kwargs, len(inputs), state)
        except _MalformedResponse as err:
            raise err.error from None
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            raise EndpointUnavailableError(
                f"cannot reach the embeddings endpoint {self._endpoint} ({type(err).__name__}) "
                f"after {budget.attempts} attempts; check model.base_url and that "
                "the server is running"
            ) from None
        except (openai.RateLimitError, openai.InternalServerError) as err:
            if _out_of_quota(err):
                raise ProviderError(
                    f"the embeddings endpoint {self._endpoint} answered HTTP 429 "
                    f"insufficient_quota: the account behind ${self.config.api_key_env} has no "
                    "quota left; add credit or use another key"
                ) from None
            raise EndpointUnavailableError(
                f"the embeddings endpoint {self._endpoint} still answered HTTP {err.status_code} "
                f"for model {self.config.name!r} after {budget.attempts} attempts "
                "(rate limit or server error); "
                "the run will be retried later. Lower the pool limit for this endpoint if it "
                "keeps happening"
            ) from None
        except openai.AuthenticationError:
            raise ProviderError(
                f"the embeddings endpoint {self._endpoint} rejected the API key in "
                f"${self.config.api_key_env} (401); set a valid key"
            ) from None
        except openai.APIStatusError as err:
            raise ProviderError(
                f"the embeddings endpoint {self._endpoint} answered HTTP {err.status_code} for "
                f"model {self.config.name!r}; check model.name and model.dimensions "
                "(send_dimensions) against what the server serves"
            ) from None

    def _attempt(
        self, kwargs: dict[str, Any], n: int, state: _RequestState
    ) -> tuple[np.ndarray, int | None]:
        """Wait for a slot and the budget, send and check: whatever is wrong with the
        response is a _MalformedResponse."""
        with self._in_flight:
            reservation = self.limiter.reserve(state.tokens)
            # After its own paced 429 this request has just waited out the pause it caused.
            wait = reservation.budget_wait
            if not state.paused:
                wait = max(wait, reservation.pause_wait)
            state.paused = False
            if wait > 0:
                self.sleep(wait)
            try:
                # The raw body: the client's parsed objects are the slow part of a fast
                # endpoint.
                raw = self.client.embeddings.with_raw_response.create(**kwargs)
            except openai.RateLimitError as err:
                asked = _server_wait(err)
                if asked is not None and not _out_of_quota(err):
                    self.limiter.pause(asked)  # every run sharing the endpoint slows down
                    state.paused = True
                raise
        spent = spent_budget_wait(raw.headers, state.tokens)
        if spent is not None:
            self.limiter.pause(spent)
        body = raw.content
        try:
            return self._parse(body, n)
        except ProviderError as err:
            raise _MalformedResponse(err, type(err).__name__) from None
        except (ValueError, TypeError, LookupError) as err:
            # Not an embeddings list: a 200 that is not JSON (a proxy's error page), an empty
            # list, items of the wrong shape, bad base64. Named by type only: the body may
            # echo the inputs.
            error = ProviderError(
                f"the embeddings endpoint {self._endpoint} returned a response that is not an "
                f"embeddings list ({type(err).__name__}); check model.base_url points at an "
                "OpenAI-compatible /v1 endpoint"
            )
            raise _MalformedResponse(error, type(err).__name__) from None

    def _parse(self, body: bytes, n: int) -> tuple[np.ndarray, int | None]:
        """Vectors in input order, checked for count, dimension and values; or ProviderError
        (a wrong answer) or ValueError/TypeError/LookupError (not an answer at all)."""
        payload = json.loads(body)
        data = payload["data"] if isinstance(payload, dict) else None
        if not isinstance(data, list) or not data:
            raise ValueError("no embeddings list")
        if not all(isinstance(d, dict) for d in data):
            raise TypeError("an item is not an object")
        indices: list[object] = [d.get("index") for d in data]
        ints = [i for i in indices if type(i) is int]
        # Every input exactly once: a missing, repeated or out-of-range index would pair a
        # vector with another row's text.
        if len(ints) != len(data) or sorted(ints) != list(range(n)):
            raise ProviderError(
                f"{self._endpoint} returned {len(data)} embeddings for {n} inputs, "
                "with indices that do not match the inputs one to one; nothing written"
            )
        by_index = dict(zip(ints, data, strict=True))
        rows = [_vector(by_index[i].get("embedding")) for i in range(n)]
        if any(r.ndim != 1 for r in rows):
            raise TypeError("an embedding is not a flat list of numbers")
        dims = {r.shape[0] for r in rows}
        if len(dims) > 1:
            raise ProviderError(
                f"{self._endpoint} returned vectors of mixed dimensions {sorted(dims)} in one "
                "response; nothing written"
            )
        # One copy into one (n, dims) array; checked before the next request is even sent.
        return check_vectors(np.vstack(rows), n, self.identity), _prompt_tokens(payload)

    def _embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        fitted = [self.token_rules.fit(t, self.max_tokens) for t in texts]
        truncated = sum(1 for f in fitted if f.truncated)
        requests = list(self._requests([f.text for f in fitted], [f.tokens for f in fitted]))
        costs: list[int] = []
        start = 0
        for request in requests:
            costs.append(sum(f.tokens for f in fitted[start : start + len(request)]))
            start += len(request)
        if len(requests) == 1 or self.concurrency == 1:
            results = [self._call(r, c) for r, c in zip(requests, costs, strict=True)]
        else:
            # In input order; every response is checked in _call before it returns,
            # and any failure raises here before a single vector of the call is returned.
            futures = [
                self._executor().submit(self._call, r, c)
                for r, c in zip(requests, costs, strict=True)
            ]
            try:
                results = [f.result() for f in futures]
            except BaseException:
                for future in futures:
                    future.cancel()  # nothing of this call is returned: send no more of it
                raise
        tokens: int | None = 0
        for _, used in results:
            tokens = None if tokens is None or used is None else tokens + used
        vectors = np.vstack([v for v, _ in results])
        if self.config.normalize:
            vectors = l2_normalize(vectors)
        return EmbeddingBatch(vectors, truncated=truncated, tokens=tokens)

    def _executor(self) -> ThreadPoolExecutor:
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="embed-http")
            return self._pool

    def close(self) -> None:
        with self._pool_lock:
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        self.client.close()
        self.limiter.close()


class _RequestState:
    """One request's pacing state across its attempts."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens
        self.paused = False  # the last attempt got a paced 429 and told the limiter
