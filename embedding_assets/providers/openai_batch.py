"""The OpenAI Batch API for embeddings: JSONL files in, checked vectors out, at half the price.

A batch file holds one `POST /v1/embeddings` request per line, each packed like an online
request (inputs and tokens per request, inputs cut to the model's limit), within the Batch
API's own limits: 50,000 requests and 50,000 embedding inputs per batch, 200 MB per file.
Results come back as an output file (one line per answered request, in any order, matched
by `custom_id`) and an error file; every answer is checked like an online response (count,
indices, dimension, values) before any vector of it can be written.

This module only talks to the API; the partition flow (what to submit, recording batches
so that nothing is paid twice, writing) is `pipeline/batch.py`.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import openai

from ..errors import EndpointUnavailableError, ProviderError
from .base import EmbeddingProvider, l2_normalize
from .openai import OpenAIProvider
from .truncate import TruncatedProvider, innermost

MAX_REQUESTS_PER_BATCH = 50_000
MAX_INPUTS_PER_BATCH = 50_000
COMPLETION_WINDOW_HOURS = 24  # the only window the Batch API offers
MAX_FILE_BYTES = 190 * 1024 * 1024  # the limit is 200 MB: keep a margin for the encoding
TERMINAL = frozenset({"completed", "failed", "expired", "cancelled"})


@dataclass
class BatchLine:
    """One request line: its custom_id and the rows it embeds (key text, text hash)."""

    custom_id: str
    keys: list[str]
    hashes: list[bytes]
    texts: list[str]
    tokens: int


@dataclass
class BatchFile:
    """One batch's lines, and the JSONL body uploaded for them."""

    lines: list[BatchLine] = field(default_factory=list)
    body: io.BytesIO = field(default_factory=io.BytesIO)
    inputs: int = 0
    tokens: int = 0

    def fits(self, line: bytes, inputs: int) -> bool:
        return not self.lines or (
            len(self.lines) < MAX_REQUESTS_PER_BATCH
            and self.inputs + inputs <= MAX_INPUTS_PER_BATCH
            and self.body.tell() + len(line) <= MAX_FILE_BYTES
        )


@dataclass(frozen=True)
class BatchStatus:
    id: str
    status: str
    input_file_id: str
    output_file_id: str | None
    error_file_id: str | None
    total: int
    completed: int
    failed: int

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


class OpenAIBatchClient:
    """Builds batch files and speaks the Files and Batches endpoints for one provider."""

    def __init__(self, provider: EmbeddingProvider) -> None:
        """`provider`: the space's provider; a client-side truncation is applied to results."""
        inner = innermost(provider)
        if not isinstance(inner, OpenAIProvider):
            raise ProviderError("mode: batch needs provider: openai (the OpenAI Batch API)")
        self.provider = inner
        self.cut = provider.cut if isinstance(provider, TruncatedProvider) else None
        self.client = inner.client
        self._endpoint = inner._endpoint

    # -- building files -------------------------------------------------------------------

    def _body(self, inputs: list[str]) -> dict[str, object]:
        body: dict[str, object] = {
            "model": self.provider.config.name,
            "input": inputs,
            "encoding_format": "base64",
        }
        if self.provider.send_dimensions:
            body["dimensions"] = self.provider.dimensions  # a truncation, shortened there
        return body

    def build_files(
        self, rows: Sequence[tuple[str, bytes, str]], prefix: str
    ) -> Iterator[BatchFile]:
        """Pack (key text, text hash, text) rows into request lines and lines into files.

        `prefix` makes custom_ids unique across the batches of one range.
        """
        provider = self.provider
        fitted = [provider.token_rules.fit(text, provider.max_tokens) for _, _, text in rows]
        current = BatchFile()
        start = 0
        texts = [f.text for f in fitted]
        for n, request in enumerate(provider._requests(texts, [f.tokens for f in fitted])):
            part = slice(start, start + len(request))
            start += len(request)
            line = BatchLine(
                custom_id=f"{prefix}-{n}",
                keys=[r[0] for r in rows[part]],
                hashes=[r[1] for r in rows[part]],
                texts=request,
                tokens=sum(f.tokens for f in fitted[part]),
            )
            raw = (
                json.dumps(
                    {
                        "custom_id": line.custom_id,
                        "method": "POST",
                        "url": "/v1/embeddings",
                        "body": self._body(request),
                    },
                    ensure_ascii=False,
                ).encode()
                + b"\n"
            )
            if not current.fits(raw, len(request)):
                yield current
                current = BatchFile()
            current.lines.append(line)
            current.body.write(raw)
            current.inputs += len(request)
            current.tokens += line.tokens
        if current.lines:
            yield current

    # -- the API ---------------------------------------------------------------------------

    def _api(self, what: str, call: object, *args: object, **kwargs: object) -> object:
        """One API call; transport failures become EndpointUnavailableError (retried later),
        refusals a ProviderError naming the call and the status, never a body."""
        try:
            return call(*args, **kwargs)  # type: ignore[operator]
        except (openai.APIConnectionError, openai.APITimeoutError) as err:
            raise EndpointUnavailableError(
                f"cannot reach {self._endpoint} to {what} ({type(err).__name__}); the step is "
                "retried, and finds the batches already submitted"
            ) from None
        except (openai.RateLimitError, openai.InternalServerError) as err:
            raise EndpointUnavailableError(
                f"{self._endpoint} answered HTTP {err.status_code} to {what}; the step is "
                "retried, and finds the batches already submitted"
            ) from None
        except openai.APIStatusError as err:
            raise ProviderError(
                f"{self._endpoint} answered HTTP {err.status_code} to {what}; check that "
                "the endpoint supports the Batch API (mode: batch needs OpenAI's Files and "
                "Batches endpoints) and the API key's permissions"
            ) from None

    def upload(self, file: BatchFile, name: str) -> str:
        uploaded = self._api(
            "upload a batch file",
            self.client.files.create,
            file=(name, file.body.getvalue(), "application/jsonl"),
            purpose="batch",
        )
        return str(uploaded.id)  # type: ignore[attr-defined]

    def create(self, input_file_id: str, metadata: dict[str, str]) -> BatchStatus:
        batch = self._api(
            "create a batch",
            self.client.batches.create,
            input_file_id=input_file_id,
            endpoint="/v1/embeddings",
            completion_window=f"{COMPLETION_WINDOW_HOURS}h",
            metadata=metadata,
        )
        return _status(batch)

    def retrieve(self, batch_id: str) -> BatchStatus:
        return _status(self._api("poll a batch", self.client.batches.retrieve, batch_id))

    def find_by_input_file(self, input_file_id: str) -> BatchStatus | None:
        """The batch created from this file, if any (a run killed between create and
        recording it): listed newest first, the first page is where a recent one is."""
        page = self._api("list batches", self.client.batches.list, limit=100)
        for batch in page.data:  # type: ignore[attr-defined]
            if batch.input_file_id == input_file_id:
                return _status(batch)
        return None

    def content(self, file_id: str) -> bytes:
        response = self._api("download a batch result", self.client.files.content, file_id)
        return bytes(response.content)  # type: ignore[attr-defined]

    # -- results ---------------------------------------------------------------------------

    def results(
        self, output: bytes, lines: dict[str, int]
    ) -> Iterator[tuple[str, np.ndarray, int | None]]:
        """(custom_id, checked vectors, tokens) for every answered line of ours.

        `lines`: custom_id -> the number of inputs it sent. Lines with another custom_id or
        an error status are skipped (their rows stay missing and are submitted again); a
        200 whose body fails a check fails the run (the model answered wrongly, and would
        again).
        """
        for raw in output.splitlines():
            if not raw.strip():
                continue
            item = json.loads(raw)
            custom_id = item.get("custom_id")
            response = item.get("response") or {}
            if custom_id not in lines or response.get("status_code") != 200:
                continue
            body = json.dumps(response.get("body")).encode()
            try:
                vectors, tokens = self.provider._parse(body, lines[custom_id])
            except (ValueError, TypeError, LookupError):
                raise ProviderError(
                    f"a batch result line from {self._endpoint} is not an embeddings list; "
                    "nothing of it written"
                ) from None
            if self.provider.config.normalize:
                vectors = l2_normalize(vectors)
            if self.cut is not None:
                vectors = self.cut(vectors)
            yield custom_id, vectors, tokens


def _status(batch: object) -> BatchStatus:
    counts = getattr(batch, "request_counts", None)
    return BatchStatus(
        id=str(batch.id),  # type: ignore[attr-defined]
        status=str(batch.status),  # type: ignore[attr-defined]
        input_file_id=str(batch.input_file_id),  # type: ignore[attr-defined]
        output_file_id=getattr(batch, "output_file_id", None),
        error_file_id=getattr(batch, "error_file_id", None),
        total=int(getattr(counts, "total", 0) or 0),
        completed=int(getattr(counts, "completed", 0) or 0),
        failed=int(getattr(counts, "failed", 0) or 0),
    )
