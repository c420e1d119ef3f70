"""The text-level API: fit texts, decode to text."""

from __future__ import annotations

from .artefacts import ProtoTokens
from .decoding import decode
from .engine import fit_token_ids
from .errors import PrototokensError
from .loading import FrozenLM


def fit(lm: FrozenLM, texts: str | list[str], **options) -> ProtoTokens:
    """Fit proto-tokens for each text (and each seed); options as for `fit_token_ids`.

    >>> fit(lm, ["first text", "second text"], seeds=2, share_m=0, recipe="paper")
    """
    texts = [texts] if isinstance(texts, str) else list(texts)
    ids = []
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise PrototokensError(f"text {i} is empty")
        ids.append(lm.encode(t))
    return fit_token_ids(lm, ids, texts=texts, **options)


def decode_text(lm: FrozenLM, pt: ProtoTokens, row: int | None = None) -> str:
    """The text one forward pass produces from a fitted row (default: the most accurate row)."""
    return lm.decode(decode(lm, pt, row))
