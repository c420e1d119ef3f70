"""Do proto-tokens fitted in one precision decode the same in another? (docs/recipe.md, "Precision")

Re-decodes saved fits with the frozen model in each dtype (the proto-tokens themselves stay fp32
and are cast to the model's dtype at its input, as in `prototokens eval --dtype`), and reports per
row how many tokens each dtype gets right, which positions change, and the margins (target logit
minus the best other logit) in the first dtype. With --round-inputs, one more column: the model in
the first dtype, `e` and `m` rounded to bf16 first, which separates the rounding of the two input
vectors from the rounding everywhere else in the network.

    python experiments/precision_eval.py docs/results/recipe/*.safetensors [--dtypes fp32 bf16] [--round-inputs] [--json FILE]

--summary reads such JSON files back and prints one line per model and N, over distinct states
(files that hold the same vectors, e.g. a phase that gained nothing, count once): how many were
fitted (accuracy >= 0.99) in the first dtype, how many still are in each other column, and the
median (range) of the right tokens each column loses.

    python experiments/precision_eval.py --summary docs/results/recipe/precision_eval_*.json
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch

import prototokens as pt
from prototokens.files import write_json
from prototokens.sweep import SweepConfig

SUCCESS = SweepConfig.success  # "fitted": the capacity search's success accuracy (0.99)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="+", help=".safetensors files written by `prototokens fit` or the experiments "
                                             "(with --summary: this script's JSON files)")
    ap.add_argument("--summary", action="store_true", help="summarise JSON files written by --json")
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--round-inputs", action="store_true",
                    help="add a column: the first dtype's model with e and m rounded to bf16")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json")
    args = ap.parse_args()
    try:
        if args.summary:
            summarise(args.files)
        else:
            run(args)
    except pt.PrototokensError as e:
        sys.exit(f"error: {e}")


def summarise(paths: list[str]) -> None:
    groups: dict[tuple[str, int], dict[str, dict]] = defaultdict(dict)
    cols: list[str] = []
    for p in paths:
        try:
            d = json.loads(Path(p).read_text())
            rows, dtypes = d["rows"], d["dtypes"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise pt.PrototokensError(f"{p} is not a JSON file written by this script ({e})") from None
        if cols and dtypes != cols:
            raise pt.PrototokensError(f"{p} has columns {dtypes}, the others {cols}")
        cols = dtypes
        fits: dict[str, pt.ProtoTokens] = {}
        for r in rows:
            if r["file"] not in fits:
                fits[r["file"]] = pt.ProtoTokens.load(r["file"])
            fit = fits[r["file"]]
            e, m = fit.vectors(r["row"])
            state = hashlib.sha256(e.numpy().tobytes() + m.numpy().tobytes()).hexdigest()
            groups[(r["model"], r["n_tokens"])].setdefault(state, r)
    ref = cols[0]
    print(f"| model | N | states | fitted in {ref} | " + " | ".join(f"still fitted, {c} | lost in {c}: median (range)"
                                                              for c in cols[1:]) + " |")
    print("|---|---|---|---|" + "---|---|" * (len(cols) - 1))
    for (model, n), states in sorted(groups.items()):
        rs = list(states.values())
        fitted = [r for r in rs if r["correct"][ref] >= SUCCESS * n]
        cells = []
        for c in cols[1:]:
            lost = [r["correct"][ref] - r["correct"][c] for r in rs]
            cells += [str(sum(r["correct"][c] >= SUCCESS * n for r in fitted)) if fitted else "–",
                      f"{statistics.median(lost):g} ({min(lost)}-{max(lost)})"]
        print(f"| {model} | {n} | {len(rs)} | {len(fitted)} | " + " | ".join(cells) + " |")


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
        if args.round_inputs:
            as_bf16 = dataclasses.replace(fit, e=fit.e.to(torch.bfloat16).float(), m=fit.m.to(torch.bfloat16).float())
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
                    per[rounded] = pt.token_margins(lms[key], as_bf16, row)
            base = per[ref]
            # right means decoded right (the argmax, as `decode` reads it): in bf16 the logits are
            # coarse enough for ties, where the margin is 0 and the argmax may still be the target
            correct = {d: sum(r["predicted"] == r["target"] for r in per[d]) for d in cols}
            changed = sorted({r["position"] for d in cols[1:]
                              for r, b in zip(per[d], base, strict=True) if r["predicted"] != b["predicted"]})
            margins = [r["margin"] for r in base if r["predicted"] == r["target"]]
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
