"""Metrics of the paper: token accuracy, C_tokens (Eq. 2) and H_LM (Eq. 3).

- token accuracy: the fraction of the N target positions whose argmax output equals the target;
- C_tokens: the number of target tokens decoded correctly, sum_i 1[argmax_i = t_i] (the decoding
  capacity in tokens of Kuratov et al.; the capacity search reports the largest N at which
  accuracy >= 0.99);
- H_LM: the text's total autoregressive cross-entropy under the frozen model,
  sum_{i=1..N} -log p(t_i | BOS, t_1..t_{i-1}), in nats (bits = nats / ln 2). The first token is
  conditioned on the tokenizer's BOS token, or its EOS token where it has no BOS (GPT-2,
  Pythia), so that every one of the N tokens is scored.
"""

from __future__ import annotations

import math
import statistics

import torch
import torch.nn.functional as F

from .loading import FrozenLM

LN2 = math.log(2)


@torch.no_grad()
def lm_cross_entropy(lm: FrozenLM, token_ids: list[list[int]], batch_size: int = 16) -> list[float]:
    """H_LM in nats for each token sequence (see module docstring for the BOS convention)."""
    out: list[float] = []
    for start in range(0, len(token_ids), batch_size):
        chunk = token_ids[start:start + batch_size]
        width = max(len(t) for t in chunk) + 1
        ids = torch.full((len(chunk), width), lm.bos_id, dtype=torch.long)
        labels = torch.full((len(chunk), width), -100, dtype=torch.long)
        for i, t in enumerate(chunk):
            ids[i, 1:len(t) + 1] = torch.tensor(t)
            labels[i, :len(t)] = torch.tensor(t)
        # right padding under a causal mask: real positions never see the padding
        logits = lm.model(input_ids=ids.to(lm.device)).logits.float()
        nll = F.cross_entropy(logits.flatten(0, 1), labels.to(lm.device).flatten(),
                              ignore_index=-100, reduction="none").view(len(chunk), width)
        out += nll.sum(1).tolist()
    return out


def nats_to_bits(nats: float) -> float:
    return nats / LN2


def capacity_summary(values: list[float]) -> dict[str, float]:
    """Mean, median, std, min and max of a list of per-text figures."""
    return {
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
    }
