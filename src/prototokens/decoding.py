"""One-pass decoding: proto-tokens + N -> one forward pass -> N tokens -> text."""

from __future__ import annotations

import torch

from .arrangements import get_arrangement
from .artefacts import ProtoTokens
from .engine import assemble_inputs, forward_logits
from .errors import PrototokensError
from .loading import FrozenLM, check_model
from .metrics import lm_cross_entropy, nats_to_bits


def check_compatible(lm: FrozenLM, pt: ProtoTokens) -> None:
    """Refuse to use proto-tokens with a model other than the one they were fitted on."""
    check_model(lm, pt.model_name, pt.fingerprint, pt.e.shape[1], what="proto-tokens")


@torch.no_grad()
def output_logits(lm: FrozenLM, e: torch.Tensor, m: torch.Tensor, n_tokens: int,
                  arrangement: str = "e-m") -> torch.Tensor:
    """The (n_tokens, vocab) logits of one forward pass of the arrangement of `e` and `m`."""
    arr = get_arrangement(arrangement)
    slots = torch.tensor([arr.slots(n_tokens)], device=lm.device)
    inputs = assemble_inputs(e.view(1, -1).to(lm.device, torch.float32),
                             m.view(1, -1).to(lm.device, torch.float32), slots)
    return forward_logits(lm, inputs)[0, arr.n_skip:].float()


def decode_ids(lm: FrozenLM, e: torch.Tensor, m: torch.Tensor, n_tokens: int,
               arrangement: str = "e-m") -> list[int]:
    """Token ids read off one forward pass of the arrangement of `e` and `m` for `n_tokens` targets."""
    return output_logits(lm, e, m, n_tokens, arrangement).argmax(-1).tolist()


def _checked_row(lm: FrozenLM, pt: ProtoTokens, row: int | None) -> int:
    check_compatible(lm, pt)
    row = pt.best_row() if row is None else row
    if not 0 <= row < len(pt.rows):
        raise PrototokensError(f"row {row} out of range: the file has {len(pt.rows)} row(s)")
    return row


def decode(lm: FrozenLM, pt: ProtoTokens, row: int | None = None) -> list[int]:
    """Decode one row of a fit (default: its most accurate row) in one forward pass."""
    row = _checked_row(lm, pt, row)
    e, m = pt.vectors(row)
    return decode_ids(lm, e, m, pt.rows[row].n_tokens, pt.arrangement)


def token_margins(lm: FrozenLM, pt: ProtoTokens, row: int | None = None) -> list[dict]:
    """Per target position of one row (default: the most accurate), how securely it is decoded.

    Each entry: ``position``, ``target`` and ``predicted`` (token ids), ``p_target`` (the target's
    softmax probability) and ``margin``, the target's logit minus the largest other logit: positive
    where the position decodes right, negative where it decodes wrong (0, a tie, is rare). Small
    margins show a fit on a knife edge, where a change to `e` or `m` that fixes one token may break
    another.
    """
    row = _checked_row(lm, pt, row)
    e, m = pt.vectors(row)
    logits = output_logits(lm, e, m, pt.rows[row].n_tokens, pt.arrangement)
    target = torch.tensor(pt.rows[row].token_ids, device=logits.device)
    target_logit = logits.gather(1, target[:, None])[:, 0]
    p_target = (target_logit - logits.logsumexp(-1)).exp()
    # the best logit other than the target's: the top one, or the second where the top one is the target
    top2 = logits.topk(2, dim=-1)
    best_other = torch.where(top2.indices[:, 0] == target, top2.values[:, 1], top2.values[:, 0])
    predicted = logits.argmax(-1)  # exactly what `decode` reads
    return [{"position": i, "target": t, "predicted": p, "p_target": pr, "margin": mg}
            for i, (t, p, pr, mg) in enumerate(zip(target.tolist(), predicted.tolist(), p_target.tolist(),
                                                   (target_logit - best_other).tolist(), strict=True))]


def evaluate(lm: FrozenLM, pt: ProtoTokens, rows: list[int] | None = None) -> list[dict]:
    """Re-measure accuracy, C_tokens and H_LM of saved proto-tokens on `lm`."""
    check_compatible(lm, pt)
    rows = list(range(len(pt.rows))) if rows is None else rows
    h = lm_cross_entropy(lm, [pt.rows[i].token_ids for i in rows])
    out = []
    for i, h_lm in zip(rows, h, strict=True):
        target = pt.rows[i].token_ids
        got = decode(lm, pt, i)
        correct = sum(a == b for a, b in zip(got, target, strict=True))
        out.append({
            "row": i, "seed": pt.rows[i].seed, "n_tokens": len(target), "accuracy": correct / len(target),
            "c_tokens": correct, "h_lm_nats": h_lm, "h_lm_bits": nats_to_bits(h_lm),
            "exact": got == target,
        })
    return out
