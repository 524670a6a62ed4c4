"""Token counts and truncation with the tokenizer the embeddings API limits by.

OpenAI refuses an input over the model's limit (8192 tokens) and a request over 300,000
tokens, counted with the model's tokenizer: cl100k_base for text-embedding-3-* and ada-002.
`bpe-openai` ships that encoding inside its wheel (tiktoken downloads it at run time), so
counts are exact offline. For other models (Ollama, vLLM, TEI... behind `base_url`) the
tokenizer is unknown and UTF-8 bytes bound tokens from above instead.

`rules_for(model)` picks the rule; `fit(text, limit)` cuts one text and says what the request
budget must charge for it. The openai provider packs and truncates with it, and the plan's
estimate (reports/tokens.py) counts with it, so both agree with what is sent.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Protocol

OPENAI_ENCODING = "cl100k_base"
DEFAULT_MAX_INPUT_TOKENS = 8192

# Without a tokenizer: a BPE token is >= 1 byte and ~4 bytes is typical. Inputs are cut at 4
# bytes/token and requests are budgeted at 2 bytes/token, so a request stays under its limit
# even for dense scripts.
BYTES_PER_TOKEN_CUT = 4
BYTES_PER_TOKEN_BUDGET = 2

# bpe-openai refuses a text of >= 1,000,000 characters or > 200,000 tokens. A long row is cut
# to a byte window before it is encoded: first 8 bytes per allowed token (typical text has
# ~4), growing up to this many bytes, which stays under both refusals (a token is >= 1 byte).
_FIRST_WINDOW_BYTES_PER_TOKEN = 8
_MAX_WINDOW_BYTES = 200_000


class Encoding(Protocol):
    """The part of a tiktoken-compatible encoding used here."""

    def encode_ordinary(self, text: str) -> list[int]: ...

    def decode(self, tokens: list[int], errors: str = ...) -> str: ...


@dataclass(frozen=True)
class Fitted:
    text: str  # what is sent: the text, or its prefix within the limit
    tokens: int  # what the request budget charges for it
    truncated: bool


class TokenRules(Protocol):
    exact: bool  # True: the model's own tokenizer; False: an upper bound from bytes
    method: str  # shown to the operator

    def fit(self, text: str, limit: int) -> Fitted: ...


def is_openai_model(name: str) -> bool:
    """OpenAI's own embedding models, whose tokenizer (cl100k_base) is public."""
    return name.startswith("text-embedding-")


@functools.cache
def openai_encoding() -> Encoding | None:
    """cl100k_base, built once per process (its rank tables take ~30 ms); None if missing."""
    try:
        import bpe_openai
    except ImportError:  # pragma: no cover - a declared dependency; fall back if removed
        return None
    encoding: Encoding = bpe_openai.get_encoding(OPENAI_ENCODING)
    return encoding


class ExactTokens:
    """Cut by tokens and charge real token counts, with the model's tokenizer."""

    exact = True

    def __init__(self, encoding: Encoding, name: str = OPENAI_ENCODING) -> None:
        self.encoding = encoding
        self.method = f"{name} tokenizer"

    def count(self, text: str) -> int:
        # encode_ordinary: the API embeds "<|endoftext|>" in a row as plain text.
        return len(self.encoding.encode_ordinary(text))

    def fit(self, text: str, limit: int) -> Fitted:
        raw = text.encode()
        window = min(limit * _FIRST_WINDOW_BYTES_PER_TOKEN, _MAX_WINDOW_BYTES)
        while True:
            whole = len(raw) <= window
            piece = text if whole else raw[:window].decode(errors="ignore")
            ids = self.encoding.encode_ordinary(piece)
            if len(ids) > limit:
                return self._cut(ids, limit)
            if whole:
                return Fitted(text, len(ids), False)
            if window >= _MAX_WINDOW_BYTES:
                # > 24 bytes per token over 200 kB (long runs of spaces or symbols): keep the
                # window, a prefix within the limit, rather than risk the tokenizer's refusal.
                return Fitted(piece, len(ids), True)
            window = min(window * 4, _MAX_WINDOW_BYTES)

    def _cut(self, ids: list[int], limit: int) -> Fitted:
        """The text of the first `limit` tokens, re-counted: a cut can tokenize differently."""
        keep = limit
        while True:
            # "ignore": a cut inside a multi-token character (an emoji) drops that character.
            text = self.encoding.decode(ids[:keep], errors="ignore")
            tokens = self.count(text)
            if tokens <= limit:
                return Fitted(text, tokens, True)
            keep -= tokens - limit


class ByteHeuristic:
    """No known tokenizer: cut at 4 bytes/token, charge 2 bytes/token (an upper bound)."""

    exact = False
    method = f"approximate ({BYTES_PER_TOKEN_CUT} UTF-8 bytes/token)"

    def fit(self, text: str, limit: int) -> Fitted:
        raw = text.encode()
        cut = limit * BYTES_PER_TOKEN_CUT
        truncated = len(raw) > cut
        if truncated:
            raw = raw[:cut]
            text = raw.decode(errors="ignore")  # never inside a character
        return Fitted(text, -(-len(raw) // BYTES_PER_TOKEN_BUDGET), truncated)


def rules_for(model: str) -> TokenRules:
    """The model's own tokenizer when it is known, else the bytes bound."""
    encoding = openai_encoding() if is_openai_model(model) else None
    return ExactTokens(encoding) if encoding is not None else ByteHeuristic()
