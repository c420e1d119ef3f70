"""Do proto-tokens fitted in one precision decode the same in another? (docs/recipe.md, "Precision")

Re-decodes saved fits with the frozen model in each dtype (the proto-tokens themselves stay fp32
and are cast to the model's dtype at its input, as in `prototokens eval --dtype`), and reports per
row how many tokens each dtype gets right, which positions change, and the margins (target logit
minus the best other logit) in the first dtype. With --round-inputs, one more column: the model in
the first dtype, `e` and `m` rounded to bf16 first, which separates the rounding of the two input
vectors from the rounding everywhere else in the network.

    python experiments/precision_eval.py docs/results/recipe/*.safetensors [--dtypes fp32 bf16] [--round-inputs] [--json FILE]
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

import prototokens as pt
from prototokens.files import write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help=".safetensors files written by `prototokens fit` or the experiments")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--round-inputs", action="store_true",
                    help="add a column: the first dtype's model with e and m rounded to bf16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json")
    args = ap.parse_args()
    try:
        run(args)
    except pt.PrototokensError as e:
        sys.exit(f"error: {e}")


def run(args: argparse.Namespace) -> None:
    fits = [(f, pt.ProtoTokens.load(f)) for f in args.files]
    fits.sort(key=lambda x: x[1].model_name)  # load each model once per dtype
    ref = args.dtypes[0]
    rounded = f"{ref}, e/m in bf16"
    cols = args.dtypes + ([rounded] if args.round_inputs else [])
    out = {"dtypes": cols, "rows": []}
    print(f"| file | row | N | {' | '.join(f'correct {d}' for d in cols)} | positions changed vs {ref} "
          f"| min {ref} margin | {ref} margins < 0.1 |")
    print("|---|---|---|" + "---|" * len(cols) + "---|---|---|")
    lms: dict[tuple[str, str], pt.FrozenLM] = {}
    t0 = time.perf_counter()
    for path, fit in fits:
        for row in range(len(fit.rows)):
            per = {}
            for d in args.dtypes:
                key = (fit.model_name, d)
                if key not in lms:
                    if any(name != fit.model_name for name, _ in lms):
                        lms.clear()  # one model (in each dtype) in memory at a time
                    lms[key] = pt.load_model(fit.model_name, device=args.device, dtype=d)
                per[d] = pt.token_margins(lms[key], fit, row)
                if d == ref and args.round_inputs:
                    as_bf16 = dataclasses.replace(fit, e=fit.e.to(torch.bfloat16).float(),
                                                  m=fit.m.to(torch.bfloat16).float())
                    per[rounded] = pt.token_margins(lms[key], as_bf16, row)
            base = per[ref]
            correct = {d: sum(r["margin"] > 0 for r in per[d]) for d in cols}
            changed = sorted({r["position"] for d in cols[1:]
                              for r, b in zip(per[d], base, strict=True) if r["predicted"] != b["predicted"]})
            margins = [r["margin"] for r in base if r["margin"] > 0]
            rec = {"file": str(path), "model": fit.model_name, "row": row, "n_tokens": fit.rows[row].n_tokens,
                   "correct": correct, "changed_positions": changed,
                   "min_margin_right": min(margins) if margins else None,
                   "margins_below_0.1": sum(m < 0.1 for m in margins)}
            out["rows"].append(rec)
            mm = "–" if rec["min_margin_right"] is None else f"{rec['min_margin_right']:.4f}"
            print(f"| {Path(path).name} | {row} | {rec['n_tokens']} | "
                  f"{' | '.join(str(correct[d]) for d in cols)} | {changed or '–'} | {mm} | "
                  f"{rec['margins_below_0.1']} |", flush=True)
    out["seconds"] = time.perf_counter() - t0
    rows = out["rows"]
    for d in cols[1:]:
        same = sum(r["correct"][d] == r["correct"][ref] for r in rows)
        lost = sum(max(0, r["correct"][ref] - r["correct"][d]) for r in rows)
        print(f"\n{d}: same count as {ref} in {same}/{len(rows)} rows; {lost} right tokens lost in all")
    if args.json:
        write_json(args.json, out)


if __name__ == "__main__":
    main()
