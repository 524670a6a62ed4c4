"""A real, scriptable HTTP server speaking the OpenAI embeddings API, for tests.

    with FakeEmbeddingsServer(dims=8) as server:
        server.fail_next("429", times=2)  # two rate limits, then normal answers
        ...  # point a client at server.base_url ("http://127.0.0.1:PORT/v1")
        assert len(server.requests) == 3

Vectors are deterministic per (salt, model, text): a unit vector drawn from numpy seeded by
sha256, `dims` long, multiplied by `scale`. A request's `dimensions` truncates and
renormalises like text-embedding-3; asking for more than `dims` is a 400. Both
`encoding_format`s are served: "float" lists and "base64" little-endian float32.

`ignore_encoding_format=True` answers float lists whatever was asked, like some compatible
servers.

Requests in flight are counted (`peak_in_flight`). `rendezvous=n` holds each embeddings
request until n are open at once (a bounded wait: `rendezvous_timeout`, then it answers
anyway), so a test proves a client keeps n in flight without timing anything.
`remaining=(requests, tokens, reset)` adds x-ratelimit-remaining-* / reset-* headers to
every success, as OpenAI does.

Faults are queued with `fail_next` and consumed one per request, in order. Every request is
recorded (after its body is read, before any fault), so tests can assert on calls. Nothing
loops unboundedly: bodies are size-capped, a hang is a bounded wait that shutdown cuts short.
"""

from __future__ import annotations

import base64
import contextlib
import email.parser
import email.policy
import functools
import hashlib
import json
import socket
import threading
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Literal

import numpy as np

FaultKind = Literal[
    "429",  # rate limited: `retry_after=` (default "0"; None leaves it out), `reset_requests=`
    # and `reset_tokens=` (x-ratelimit-reset-*), `code=` (default "rate_limit_exceeded")
    "status",  # any HTTP status (`status=`, default 500) with an OpenAI-style error body
    "wrong_dims",  # every vector has `dims=` components (default: served dimension + 3)
    "mixed_dims",  # the first vector is one component short
    "fewer",  # one item fewer than there were inputs
    "empty",  # `data: []`
    "duplicate_index",  # the last item repeats the first one's index and vector
    "no_index",  # items without an `index` key
    "shuffle",  # items in reverse order (indices still correct)
    "nan",  # the first vector's first component is NaN
    "no_usage",  # the `usage` object is left out
    "not_json",  # 200 with a non-JSON body (a proxy's error page, echoing the first input)
    "bad_base64",  # the first embedding is not valid base64 (or, as floats, not a number)
    "hang",  # no answer for `seconds=` (default 5; shutdown ends it early), then hang up
    "drop",  # close the connection without answering
]

MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    status: int = 500
    dims: int | None = None
    seconds: float = 5.0
    retry_after: str | None = "0"
    reset_requests: str | None = None
    reset_tokens: str | None = None
    code: str = "rate_limit_exceeded"

    def rate_limit_headers(self) -> dict[str, str]:
        named = {
            "retry-after": self.retry_after,
            "x-ratelimit-reset-requests": self.reset_requests,
            "x-ratelimit-reset-tokens": self.reset_tokens,
        }
        return {name: value for name, value in named.items() if value is not None}


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    model: str | None
    inputs: list[str]
    dimensions: int | None
    dimensions_sent: bool
    encoding_format: str | None
    authorization: str | None
    fault: FaultKind | None

    @property
    def n_inputs(self) -> int:
        return len(self.inputs)


@functools.lru_cache(maxsize=4096)
def fake_vector(text: str, model: str, dims: int, salt: str = "") -> np.ndarray:
    """The unit vector the server returns for `text` (before truncation and scaling).

    Cached (read-only): benchmarks/openai_decode.py sends the same texts again and again, and
    should measure the client's decoding, not this."""
    digest = hashlib.sha256(f"{salt}\x00{model}\x00{text}".encode()).digest()
    rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
    vector = rng.standard_normal(dims)
    vector /= np.linalg.norm(vector)
    vector.flags.writeable = False
    return vector


def token_count(text: str) -> int:
    """What the server reports in `usage` per input: ~4 UTF-8 bytes per token, at least 1."""
    return max(1, len(text.encode()) // 4)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: nothing lingers after shutdown

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep test output clean

    def _send_json(
        self, status: int, payload: object, headers: dict[str, str] | None = None
    ) -> None:
        body = json.dumps(payload).encode()
        self._send_raw(status, body, "application/json", headers)

    def _send_raw(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _error(
        self,
        status: int,
        message: str,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        err_type = "invalid_request_error" if status < 500 else "server_error"
        payload = {"error": {"message": message, "type": err_type, "param": None, "code": code}}
        if headers is None and status == 429:
            headers = {"retry-after": "0"}
        self._send_json(status, payload, headers)

    def do_GET(self) -> None:
        owner = self.server.owner
        path = self.path.split("?")[0].rstrip("/")
        if path.startswith("/v1/batches") or path.startswith("/v1/files"):
            status, payload = owner.batches.get(path)
            if isinstance(payload, bytes):
                self._send_raw(status, payload, "application/octet-stream")
            else:
                self._send_json(status, payload)
            return
        self._error(404, f"unknown path {self.path}")

    def do_POST(self) -> None:
        owner = self.server.owner
        length = int(self.headers.get("Content-Length") or 0)
        if length < 0 or length > MAX_BODY_BYTES:
            self._error(413, "request body too large")
            return
        raw = self.rfile.read(length)
        path = self.path.rstrip("/")
        if path in ("/v1/files", "/v1/batches"):
            content_type = self.headers.get("Content-Type", "")
            self._send_json(*owner.batches.post(path, raw, content_type))
            return
        with owner._entered():
            self._handle(owner, raw)

    def _handle(self, owner: FakeEmbeddingsServer, raw: bytes) -> None:
        if owner.latency:
            owner._stopping.wait(owner.latency)
        try:
            body = json.loads(raw or b"{}")
        except ValueError:
            body = None
        if not isinstance(body, dict):
            owner._record(self, None, None, [], None, False, None)
            self._error(400, "request body must be a JSON object")
            return

        model = body.get("model")
        raw_input = body.get("input")
        inputs = [raw_input] if isinstance(raw_input, str) else raw_input
        dimensions_sent = "dimensions" in body
        dimensions = body.get("dimensions")
        encoding_format = body.get("encoding_format")
        fault = owner._next_fault()
        owner._record(
            self,
            model if isinstance(model, str) else None,
            fault,
            inputs if isinstance(inputs, list) else [],
            dimensions if isinstance(dimensions, int) else None,
            dimensions_sent,
            encoding_format if isinstance(encoding_format, str) else None,
        )

        if self.path.rstrip("/") != "/v1/embeddings":
            self._error(404, f"unknown path {self.path}")
            return
        expected_auth = f"Bearer {owner.api_key}"
        if owner.api_key is not None and self.headers.get("Authorization") != expected_auth:
            self._error(401, "Incorrect API key provided.", "invalid_api_key")
            return
        if not isinstance(model, str) or not model:
            self._error(400, "'model' is required")
            return
        if (
            not isinstance(inputs, list)
            or not inputs
            or not all(isinstance(t, str) and t for t in inputs)
        ):
            # Echo the input, as real servers do, so a leaking client would show it.
            self._error(400, f"'input' must be a non-empty string or list of strings: {raw_input}")
            return
        served = owner.dims
        if dimensions_sent:
            if not isinstance(dimensions, int) or dimensions < 1 or dimensions > owner.dims:
                self._error(400, f"This model does not support dimensions={dimensions}.")
                return
            served = dimensions
        if encoding_format not in (None, "float", "base64"):
            self._error(400, f"unsupported encoding_format {encoding_format!r}")
            return

        if fault is not None and self._apply_transport_fault(fault, inputs):
            return

        vectors = [owner.vector(text, model, served) for text in inputs]
        indices = list(range(len(inputs)))
        kind = fault.kind if fault is not None else None
        if kind == "wrong_dims":
            wrong = fault.dims if fault is not None and fault.dims else served + 3
            # np.resize cuts or repeats: deterministic at any length.
            vectors = [np.resize(owner.vector(text, model), wrong) for text in inputs]
        elif kind == "mixed_dims":
            vectors[0] = vectors[0][:-1]
        elif kind == "nan":
            vectors[0] = vectors[0].copy()
            vectors[0][0] = np.nan
        served_format = "float" if owner.ignore_encoding_format else encoding_format
        items = [
            {
                "object": "embedding",
                "index": i,
                "embedding": _encode(v, served_format),
            }
            for i, v in zip(indices, vectors, strict=True)
        ]
        if kind == "bad_base64":
            items[0]["embedding"] = "not base64!" if served_format == "base64" else ["x"]
        if kind == "fewer":
            items = items[:-1]
        elif kind == "empty":
            items = []
        elif kind == "duplicate_index" and len(items) > 1:
            items[-1] = dict(items[0])
        elif kind == "shuffle":
            items.reverse()
        elif kind == "no_index":
            for item in items:
                del item["index"]
        tokens = sum(token_count(t) for t in inputs)
        payload: dict[str, object] = {"object": "list", "data": items, "model": model}
        if kind != "no_usage":
            payload["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        owner._count_tokens(tokens)
        headers = None
        if owner.remaining is not None:
            left_requests, left_tokens, reset = owner.remaining
            headers = {
                "x-ratelimit-remaining-requests": str(left_requests),
                "x-ratelimit-remaining-tokens": str(left_tokens),
                "x-ratelimit-reset-requests": reset,
                "x-ratelimit-reset-tokens": reset,
            }
        self._send_json(200, payload, headers)

    def _apply_transport_fault(self, fault: Fault, inputs: list[str]) -> bool:
        """Answer for faults that never produce embeddings; True when handled."""
        if fault.kind == "429":
            message = "Rate limit reached. Please try again later."
            self._error(429, message, fault.code, fault.rate_limit_headers())
        elif fault.kind == "status":
            self._error(fault.status, f"The server had an error processing {inputs[0]!r}.")
        elif fault.kind == "not_json":
            page = f"<html>upstream proxy error while sending {inputs[0]!r}</html>"
            self._send_raw(200, page.encode(), "text/html")
        elif fault.kind == "hang":
            self.server.owner._stopping.wait(fault.seconds)
            self.close_connection = True
        elif fault.kind == "drop":
            self.close_connection = True
        else:
            return False
        return True


def _encode(vector: np.ndarray, encoding_format: object) -> list[float] | str:
    if encoding_format == "base64":
        return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")
    return [float(x) for x in vector]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: FakeEmbeddingsServer


class FakeEmbeddingsServer:
    """An OpenAI-compatible embeddings endpoint on 127.0.0.1, on an ephemeral port."""

    def __init__(
        self,
        dims: int = 8,
        *,
        salt: str = "",
        scale: float = 1.0,
        api_key: str | None = None,
        latency: float = 0.0,
        ignore_encoding_format: bool = False,
        rendezvous: int = 1,
        rendezvous_timeout: float = 10.0,
        remaining: tuple[int, int, str] | None = None,
    ) -> None:
        self.dims = dims
        self.rendezvous = rendezvous  # hold each request until this many are open at once
        self.rendezvous_timeout = rendezvous_timeout
        self.remaining = remaining  # (requests, tokens, reset) for x-ratelimit-* headers
        self.in_flight = 0
        self.peak_in_flight = 0
        self._arrivals = threading.Condition()
        self.ignore_encoding_format = ignore_encoding_format  # float lists, whatever was asked
        self.latency = latency  # seconds before every answer: a remote model's round trip
        self.salt = salt  # another salt: "another model" under the same name and dimension
        self.scale = scale  # != 1.0: vectors that are not unit-norm
        self.api_key = api_key  # when set, any other bearer token gets a 401
        self.tokens_served = 0
        self.batches = FakeBatchAPI(self)
        self._faults: deque[Fault] = deque()
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeEmbeddingsServer:
        if self._httpd is not None:
            raise RuntimeError("server already started")
        httpd = _Server(("127.0.0.1", 0), _Handler)
        httpd.owner = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name="fake-openai-embeddings",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # ends any "hang" early
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._httpd = None
        self._thread = None

    def __enter__(self) -> FakeEmbeddingsServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what tests use ---------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("server not started")
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def fail_next(
        self,
        kind: FaultKind,
        times: int = 1,
        *,
        status: int = 500,
        dims: int | None = None,
        seconds: float = 5.0,
        retry_after: str | None = "0",
        reset_requests: str | None = None,
        reset_tokens: str | None = None,
        code: str = "rate_limit_exceeded",
    ) -> None:
        """Queue `times` copies of a fault; each later request consumes one, in order."""
        if times < 1:
            raise ValueError("times must be >= 1")
        fault = Fault(
            kind,
            status=status,
            dims=dims,
            seconds=seconds,
            retry_after=retry_after,
            reset_requests=reset_requests,
            reset_tokens=reset_tokens,
            code=code,
        )
        with self._lock:
            self._faults.extend([fault] * times)

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return len(self._faults)

    def vector(self, text: str, model: str, dims: int | None = None) -> np.ndarray:
        """The float32 vector served for `text` at `dims` (truncated and renormalised)."""
        full = fake_vector(text, model, self.dims, self.salt)
        cut = full[: dims or self.dims]
        return (cut / np.linalg.norm(cut) * self.scale).astype(np.float32)

    # -- handler side -----------------------------------------------------------------------

    @contextlib.contextmanager
    def _entered(self) -> Iterator[None]:
        """Count the request in flight; with a rendezvous, wait until enough are."""
        with self._arrivals:
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            self._arrivals.notify_all()
            self._arrivals.wait_for(
                lambda: self.peak_in_flight >= self.rendezvous or self._stopping.is_set(),
                timeout=self.rendezvous_timeout,
            )
        try:
            yield
        finally:
            with self._arrivals:
                self.in_flight -= 1

    def _next_fault(self) -> Fault | None:
        with self._lock:
            return self._faults.popleft() if self._faults else None

    def _count_tokens(self, tokens: int) -> None:
        with self._lock:
            self.tokens_served += tokens

    def _record(
        self,
        handler: _Handler,
        model: str | None,
        fault: Fault | None,
        inputs: list[str],
        dimensions: int | None,
        dimensions_sent: bool,
        encoding_format: str | None,
    ) -> None:
        request = RecordedRequest(
            method=handler.command,
            path=handler.path,
            model=model,
            inputs=[str(t) for t in inputs],
            dimensions=dimensions,
            dimensions_sent=dimensions_sent,
            encoding_format=encoding_format,
            authorization=handler.headers.get("Authorization"),
            fault=fault.kind if fault is not None else None,
        )
        with self._lock:
            self._requests.append(request)


def closed_port() -> int:
    """A 127.0.0.1 port nothing listens on (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


BatchOutcome = Literal["complete", "expire", "error_lines"]


class FakeBatchAPI:
    """The Files and Batches endpoints, enough for embeddings batches.

    Each created batch takes its outcome from `outcomes` (queued with `plan`, default
    "complete") and ends after `polls` retrieves:

    - "complete": every line answered in the output file (in reverse order: matched by
      custom_id, not position);
    - "expire": status `expired`, only the first half of the lines answered;
    - "error_lines": `completed`, but every other line is in the error file (status 500).

    `created` lists the batches created, so a test can prove nothing was submitted twice.
    """

    def __init__(self, owner: FakeEmbeddingsServer, polls: int = 2) -> None:
        self.owner = owner
        self.polls = polls
        self.files: dict[str, bytes] = {}
        self.records: dict[str, dict[str, Any]] = {}
        self.created: list[str] = []
        self.outcomes: deque[BatchOutcome] = deque()
        self._retrieves: dict[str, int] = {}
        self._outcome: dict[str, BatchOutcome] = {}
        self._lock = threading.Lock()

    def plan(self, *outcomes: BatchOutcome) -> None:
        with self._lock:
            self.outcomes.extend(outcomes)

    def _new_file(self, content: bytes, purpose: str) -> str:
        file_id = f"file-{len(self.files) + 1:04d}"
        self.files[file_id] = content
        return file_id

    def post(self, path: str, raw: bytes, content_type: str) -> tuple[int, object]:
        with self._lock:
            if path == "/v1/files":
                message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                    b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw
                )
                content = b""
                for part in message.iter_parts():
                    if part.get_param("name", header="content-disposition") == "file":
                        content = part.get_payload(decode=True) or b""
                file_id = self._new_file(content, "batch")
                return 200, {
                    "id": file_id,
                    "object": "file",
                    "bytes": len(content),
                    "purpose": "batch",
                    "filename": "input.jsonl",
                    "created_at": 0,
                    "status": "processed",
                }
            body = json.loads(raw)
            if body.get("input_file_id") not in self.files:
                return 400, {"error": {"message": "unknown input file", "type": "x"}}
            batch_id = f"batch_{len(self.records) + 1:04d}"
            lines = self.files[body["input_file_id"]].splitlines()
            self.records[batch_id] = {
                "id": batch_id,
                "object": "batch",
                "endpoint": body.get("endpoint"),
                "input_file_id": body["input_file_id"],
                "completion_window": body.get("completion_window"),
                "status": "validating",
                "created_at": 0,
                "output_file_id": None,
                "error_file_id": None,
                "metadata": body.get("metadata"),
                "request_counts": {"total": len(lines), "completed": 0, "failed": 0},
            }
            self._outcome[batch_id] = self.outcomes.popleft() if self.outcomes else "complete"
            self._retrieves[batch_id] = 0
            self.created.append(batch_id)
            return 200, self.records[batch_id]

    def get(self, path: str) -> tuple[int, object]:
        with self._lock:
            if path == "/v1/batches":
                data = [self.records[b] for b in reversed(self.created)]
                return 200, {
                    "object": "list",
                    "data": data,
                    "has_more": False,
                    "first_id": None,
                    "last_id": None,
                }
            if path.startswith("/v1/batches/"):
                batch_id = path.rsplit("/", 1)[1]
                if batch_id not in self.records:
                    return 404, {"error": {"message": "no such batch", "type": "x"}}
                self._retrieves[batch_id] += 1
                if self._retrieves[batch_id] >= self.polls and self.records[batch_id][
                    "status"
                ] not in ("completed", "expired"):
                    self._end(batch_id)
                elif self.records[batch_id]["status"] == "validating":
                    self.records[batch_id]["status"] = "in_progress"
                return 200, self.records[batch_id]
            if path.startswith("/v1/files/") and path.endswith("/content"):
                file_id = path.split("/")[3]
                if file_id not in self.files:
                    return 404, {"error": {"message": "no such file", "type": "x"}}
                return 200, self.files[file_id]
            return 404, {"error": {"message": f"unknown path {path}", "type": "x"}}

    def _end(self, batch_id: str) -> None:
        record = self.records[batch_id]
        outcome = self._outcome[batch_id]
        lines = [json.loads(x) for x in self.files[record["input_file_id"]].splitlines() if x]
        answered, errors = [], []
        for n, line in enumerate(lines):
            if outcome == "expire" and n >= len(lines) // 2:
                continue
            if outcome == "error_lines" and n % 2 == 1:
                errors.append(
                    {
                        "id": f"req_{n}",
                        "custom_id": line["custom_id"],
                        "response": {
                            "status_code": 500,
                            "request_id": "r",
                            "body": {"error": {"message": "server error", "type": "server_error"}},
                        },
                        "error": None,
                    }
                )
                continue
            answered.append(
                {
                    "id": f"req_{n}",
                    "custom_id": line["custom_id"],
                    "response": {
                        "status_code": 200,
                        "request_id": "r",
                        "body": self._answer(line["body"]),
                    },
                    "error": None,
                }
            )
        answered.reverse()
        record["status"] = "expired" if outcome == "expire" else "completed"
        counts = record["request_counts"]
        counts["completed"], counts["failed"] = len(answered), len(errors)
        if answered:
            record["output_file_id"] = self._new_file(
                b"".join(json.dumps(a).encode() + b"\n" for a in answered), "batch_output"
            )
        if errors:
            record["error_file_id"] = self._new_file(
                b"".join(json.dumps(e).encode() + b"\n" for e in errors), "batch_output"
            )

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        owner = self.owner
        served = body.get("dimensions") or owner.dims
        items = [
            {
                "object": "embedding",
                "index": i,
                "embedding": _encode(
                    owner.vector(t, body["model"], served), body.get("encoding_format")
                ),
            }
            for i, t in enumerate(body["input"])
        ]
        tokens = sum(token_count(t) for t in body["input"])
        return {
            "object": "list",
            "data": items,
            "model": body["model"],
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
        }
