"""Why the paper's recipe leaves the first token wrong, and what fixes it (docs/recipe.md).

1. Sink probe: random inputs of growing norm at positions 0 and 1. For each scale, how much the
   output at position 0 moves with its input (std of logits across 8 random inputs, and how many
   distinct argmax tokens), and the largest hidden-state norm there (the attention sink's
   massive activation).
2. Fits: the same sentences with the `paper` recipe and with larger inits, the [e][m]x(N-1) scheme,
   a fixed step budget; per-position correctness shows where each stalls.

    python experiments/first_token.py [--model smollm2-135m] [--steps 300] [--json FILE]
"""

from __future__ import annotations

import argparse
import time

import torch

import prototokens as pt
from prototokens.files import write_json

SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "It was a bright cold day in April, and the clocks were striking thirteen.",
]
VARIANTS = [
    ("paper", {}),
    ("paper, init x10", {"init_scale": 10.0}),
    ("paper, init x10, lr 0.03", {"init_scale": 10.0, "lr": 0.03}),
    ("large-init (init x10, lr 0.1)", {"init_scale": 10.0, "lr": 0.1}),
]


@torch.no_grad()
def sink_probe(lm: pt.FrozenLM, scales=(0.1, 1.0, 3.0, 10.0, 30.0)) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    rows = []
    for s in scales:
        x = (torch.randn(8, 2, lm.hidden_size, generator=g) * s).to(lm.device, lm.dtype)
        out = lm.model(inputs_embeds=x, output_hidden_states=True)
        hidden0 = torch.stack([h[:, 0].float().norm(dim=-1).mean() for h in out.hidden_states])
        logits0 = out.logits[:, 0].float()
        rows.append({"scale": s, "input_norm": x[:, 0].float().norm(dim=-1).mean().item(),
                     "max_hidden_norm_pos0": hidden0.max().item(),
                     "logit_std_across_inputs_pos0": logits0.std(0).mean().item(),
                     "distinct_argmax_pos0": len(set(logits0.argmax(-1).tolist()))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--variants", nargs="+", help="run only the variants whose name starts with one of these")
    ap.add_argument("--json")
    args = ap.parse_args()
    lm = pt.load_model(args.model, device=args.device)
    out = {"model": lm.name, "steps": args.steps, "probe": sink_probe(lm), "fits": []}
    print(f"# first-token experiment on {lm.name} ({lm.device})\n")
    print("| input scale | input norm | max hidden norm at pos 0 | logit std across inputs | distinct argmax (of 8) |")
    print("|---|---|---|---|---|")
    for r in out["probe"]:
        print(f"| {r['scale']} | {r['input_norm']:.1f} | {r['max_hidden_norm_pos0']:,.0f} | "
              f"{r['logit_std_across_inputs_pos0']:.2f} | {r['distinct_argmax_pos0']} |")
    print("\n| recipe | text | N | accuracy | steps | status | correct positions |")
    print("|---|---|---|---|---|---|---|")
    for name, changes in VARIANTS:
        if args.variants and not any(name.startswith(v) for v in args.variants):
            continue
        rec = pt.get_recipe("paper", max_steps=args.steps, **changes)
        t = time.perf_counter()
        fit = pt.fit(lm, SENTENCES, arrangement="e-m", recipe=rec)
        secs = time.perf_counter() - t
        for i, r in enumerate(fit.rows):
            bits = "".join("1" if c else "0" for c in r.correct)
            out["fits"].append({"variant": name, "recipe": rec.to_dict(), "text": i, "n_tokens": r.n_tokens,
                                "accuracy": r.accuracy, "steps": r.steps, "status": r.status, "correct": bits,
                                "seconds_batch": secs})
            print(f"| {name} | {i} | {r.n_tokens} | {r.accuracy:.3f} | {r.steps} | {r.status} | `{bits}` |", flush=True)
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
