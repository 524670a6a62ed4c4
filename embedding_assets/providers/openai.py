"""`openai`: the official client, for OpenAI and any compatible server via `base_url`.

Ollama, vLLM, TEI and infinity all speak `POST /v1/embeddings`. Requests stay inside the
API limits (2048 inputs, a token budget per request), transient failures (429, 5xx,
timeouts, dropped connections) are retried with exponential backoff and jitter, and every
response is checked for count, order, dimension and values before a single vector can be
written; a response that fails a check is retried the same way (at most
MALFORMED_ATTEMPTS times), and only one that stays bad fails the run.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import openai
from openai.types import CreateEmbeddingResponse
from tenacity import (
    RetryCallState,
    Retrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_random_exponential,
)

from ..config import ModelConfig
from ..errors import ConfigError, EndpointUnavailableError, ProviderError
from .base import EmbeddingBatch, EmbeddingProvider, ModelIdentity, check_vectors, l2_normalize

log = logging.getLogger(__name__)

DEFAULT_MAX_INPUT_TOKENS = 8192
# Without the model's tokenizer, bytes bound tokens from above (a BPE token is >= 1 byte);
# ~4 bytes per token is typical. Inputs are cut at 4 bytes/token and requests are budgeted
# at 2 bytes/token, so a request stays under the limit even for dense scripts.
_BYTES_PER_TOKEN_CUT = 4
_BYTES_PER_TOKEN_BUDGET = 2
_TRANSIENT = (
    openai.RateLimitError,
    openai.InternalServerError,
    openai.APITimeoutError,
    openai.APIConnectionError,
)


def supports_dimensions_parameter(model: str) -> bool:
    """OpenAI accepts `dimensions` only for text-embedding-3 and later models."""
    return model.startswith("text-embedding-") and not model.startswith("text-embedding-ada")


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


# A malformed response gets at most this many attempts (fewer when max_retries is lower):
# a proxy's one bad answer heals on the next, a wrong model or dimension never does and
# should fail fast with its clear message.
MALFORMED_ATTEMPTS = 3


def _malformed_too_often(state: RetryCallState) -> bool:
    err = state.outcome.exception() if state.outcome else None
    return isinstance(err, _MalformedResponse) and state.attempt_number >= MALFORMED_ATTEMPTS


def _log_retry(state: RetryCallState) -> None:
    err = state.outcome.exception() if state.outcome else None
    # The exception class and status only: bodies may echo inputs.
    if isinstance(err, _MalformedResponse):
        what = f"malformed response, {err.kind}"
    else:
        status = getattr(err, "status_code", None)
        what = type(err).__name__ + (f" {status}" if status else "")
    log.warning(
        "embeddings request failed (%s), attempt %d; backing off", what, state.attempt_number
    )


class OpenAIProvider(EmbeddingProvider):
    def __init__(self, config: ModelConfig) -> None:
        self.config = config
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
        self.max_tokens = config.max_input_tokens or DEFAULT_MAX_INPUT_TOKENS
        self.identity = ModelIdentity(
            provider="openai",
            model=config.name,
            revision=config.revision,
            dimensions=config.dimensions,
            normalize=config.normalize,
        )
        self._endpoint = config.base_url or "https://api.openai.com/v1"

    def _truncate(self, text: str) -> tuple[str, bool]:
        limit = self.max_tokens * _BYTES_PER_TOKEN_CUT
        raw = text.encode()
        if len(raw) <= limit:
            return text, False
        return raw[:limit].decode(errors="ignore"), True

    def _requests(self, texts: list[str]) -> Iterator[list[str]]:
        """Split into requests within the input-count and token budgets."""
        budget = self.config.max_tokens_per_request * _BYTES_PER_TOKEN_BUDGET
        chunk: list[str] = []
        used = 0
        for text in texts:
            size = len(text.encode())
            if chunk and (len(chunk) >= self.config.max_inputs_per_request or used + size > budget):
                yield chunk
                chunk, used = [], 0
            chunk.append(text)
            used += size
        if chunk:
            yield chunk

    def _call(self, inputs: list[str]) -> tuple[np.ndarray, int | None]:
        """One request, retried until its response passes every check, or attempts run out."""
        kwargs: dict[str, Any] = {"model": self.config.name, "input": inputs}
        if self.send_dimensions:
            kwargs["dimensions"] = self.config.dimensions
        retrying = Retrying(
            retry=retry_if_exception_type((*_TRANSIENT, _MalformedResponse)),
            wait=wait_random_exponential(multiplier=0.5, max=30),
            stop=stop_after_attempt(self.config.max_retries + 1) | _malformed_too_often,
            before_sleep=_log_retry,
            reraise=True,
        )
        try:
            return retrying(self._attempt, kwargs, len(inputs))
        except _MalformedResponse as err:
            raise err.error from None
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            raise EndpointUnavailableError(
                f"cannot reach the embeddings endpoint {self._endpoint} ({type(err).__name__}) "
                f"after {self.config.max_retries + 1} attempts; check model.base_url and that "
                "the server is running"
            ) from None
        except (openai.RateLimitError, openai.InternalServerError) as err:
            raise EndpointUnavailableError(
                f"the embeddings endpoint {self._endpoint} still answered HTTP {err.status_code} "
                f"for model {self.config.name!r} after {self.config.max_retries + 1} attempts "
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

    def _attempt(self, kwargs: dict[str, Any], n: int) -> tuple[np.ndarray, int | None]:
        """Send and check: whatever is wrong with the response is a _MalformedResponse."""
        try:
            return self._parse(self.client.embeddings.create(**kwargs), n)
        except ProviderError as err:
            raise _MalformedResponse(err, type(err).__name__) from None
        except (ValueError, AttributeError, TypeError) as err:
            # The client's parsing or ours failed: an empty list, a 200 that is not JSON (a
            # proxy's error page), items of the wrong shape. Named by type only: the body may
            # echo the inputs.
            error = ProviderError(
                f"the embeddings endpoint {self._endpoint} returned a response that is not an "
                f"embeddings list ({type(err).__name__}); check model.base_url points at an "
                "OpenAI-compatible /v1 endpoint"
            )
            raise _MalformedResponse(error, type(err).__name__) from None

    def _parse(self, response: CreateEmbeddingResponse, n: int) -> tuple[np.ndarray, int | None]:
        """Vectors in input order, checked for count, dimension and values; or ProviderError."""
        data = list(response.data)
        # The client does not validate: a missing `index` is None, a wrong one any type.
        indices: list[object] = [getattr(d, "index", None) for d in data]
        ints = [i for i in indices if type(i) is int]
        # Every input exactly once: a missing, repeated or out-of-range index would pair a
        # vector with another row's text.
        if len(ints) != len(data) or sorted(ints) != list(range(n)):
            raise ProviderError(
                f"{self._endpoint} returned {len(data)} embeddings for {n} inputs, "
                "with indices that do not match the inputs one to one; nothing written"
            )
        by_index = dict(zip(ints, data, strict=True))
        rows = [np.asarray(by_index[i].embedding, dtype=np.float32) for i in range(n)]
        if any(r.ndim != 1 for r in rows):
            raise TypeError("an embedding is not a flat list of numbers")
        dims = {r.shape[0] for r in rows}
        if len(dims) > 1:
            raise ProviderError(
                f"{self._endpoint} returned vectors of mixed dimensions {sorted(dims)} in one "
                "response; nothing written"
            )
        usage = getattr(response, "usage", None)
        tokens = getattr(usage, "prompt_tokens", None) if usage is not None else None
        # Checked per response, before the next request is even sent.
        return check_vectors(np.vstack(rows), n, self.identity), tokens

    def _embed(self, texts: Sequence[str]) -> EmbeddingBatch:
        cut = [self._truncate(t) for t in texts]
        truncated = sum(1 for _, was_cut in cut if was_cut)
        parts: list[np.ndarray] = []
        tokens: int | None = 0
        for request in self._requests([t for t, _ in cut]):
            vectors, used = self._call(request)
            parts.append(vectors)
            tokens = None if tokens is None or used is None else tokens + used
        vectors = np.vstack(parts)
        if self.config.normalize:
            vectors = l2_normalize(vectors)
        return EmbeddingBatch(vectors, truncated=truncated, tokens=tokens)

    def close(self) -> None:
        self.client.close()
