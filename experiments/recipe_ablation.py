"""Recipe ablations: which init, learning rate, schedule (or step cut on a stall), arrangement, restarts and loss shaping
make one-step fits converge, on the same texts and step budget (docs/recipe.md, issue #6).

Every variant fits the same Project Gutenberg passages (their first N tokens; each its own `m`, or
one `m` shared by all with --share-m 0) and reports how many reached 100%, the median steps to get
there (a failure counts as more than the budget), mean accuracy, how often the first token (the
output at `e`) is right, and wall time.
Step counts do not depend on the device, so they can be compared across machines; seconds cannot.

    python experiments/recipe_ablation.py --tokens 32 --texts 4 --steps 300 --json FILE
    python experiments/recipe_ablation.py --list

A rerun with the same --json file and settings keeps the variants already measured there; a file
from other settings (model, dtype, N, texts, seeds, budget or sharing of m) is refused, never
overwritten.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time

import prototokens as pt
from prototokens import data
from prototokens.engine import embedding_stats
from prototokens.files import write_json

# name -> (arrangement, recipe overrides on `paper`); init "embedding" scales are multiples of the
# embedding std (0.136 on SmolLM2, so x75 is about the N(0, 10^2) of large-init).
LARGE = {"init_scale": 10.0, "lr": 0.1}
X30 = {"init_scale": 30.0, "lr": 0.3}
RECOMMENDED = {**X30, "focal_gamma": 2.0}  # = the `recommended` recipe's overrides on `paper`
COSINE = {"schedule": "cosine", "warmup_steps": 10}
B999 = {**RECOMMENDED, **COSINE, "decay_steps": 5000, "betas": (0.9, 0.999)}  # = `recommended-cosine-b999`
VARIANTS: dict[str, tuple[str, dict]] = {
    "paper": ("e-m", {}),
    "paper, [e][m]xN": ("e-m-plus", {}),
    "init x3, lr 0.03": ("e-m", {"init_scale": 3.0, "lr": 0.03}),
    "large-init": ("e-m", LARGE),
    "large-init, [e][m]xN": ("e-m-plus", LARGE),
    "large-init, lr 0.03": ("e-m", {**LARGE, "lr": 0.03}),
    "large-init, lr 0.3": ("e-m", {**LARGE, "lr": 0.3}),
    "init x30, lr 0.3": ("e-m", X30),
    "init x30, lr 0.3, focal 2": ("e-m", RECOMMENDED),
    "init x30, lr 0.3, [e][m]xN": ("e-m-plus", X30),
    "init x30, lr 0.3, focal 2, cosine": ("e-m", {**RECOMMENDED, **COSINE}),
    "init x30, lr 0.3, focal 2, cosine, [e][m]xN": ("e-m-plus", {**RECOMMENDED, **COSINE}),
    # = the `recommended-cosine` recipe: the decay spans 5000 steps whatever --steps is, so a shorter
    # budget cuts its fits short without changing them
    "init x30, lr 0.3, focal 2, cosine 5000": ("e-m", {**RECOMMENDED, **COSINE, "decay_steps": 5000}),
    # = `recommended-cosine-nowd`: the decoupled weight decay of 0.01 shrinks e and m by 0.3% a step at lr 0.3
    "init x30, lr 0.3, focal 2, cosine 5000, no weight decay": (
        "e-m", {**RECOMMENDED, **COSINE, "decay_steps": 5000, "weight_decay": 0.0}),
    # the same with a 10x smaller init (norm about 76 on Gemma-3-270M instead of 760): the Gemma N = 181 probe
    "init x3, lr 0.3, focal 2, cosine 5000, no weight decay": (
        "e-m", {**RECOMMENDED, **COSINE, "decay_steps": 5000, "weight_decay": 0.0, "init_scale": 3.0}),
    # = `recommended-cosine-b999`: the paper's Adam betas are (0.9, 0.9); the usual beta2 of 0.999 averages
    # the squared gradient over ~1000 steps instead of ~10, so a coordinate's step shrinks with its gradient
    "init x30, lr 0.3, focal 2, cosine 5000, betas (0.9, 0.999)": (
        "e-m", B999),
    # the same from a 10x smaller init, the decay kept: the second Gemma N = 181 probe of a x3 init
    "init x3, lr 0.3, focal 2, cosine 5000, betas (0.9, 0.999)": (
        "e-m", {**B999, "init_scale": 3.0}),
    # a split init: e at x30 (out of the first token's stall), m at x3 (near the norm the decay settles at)
    "init x30 e, x3 m, lr 0.3, focal 2, cosine 5000, betas (0.9, 0.999)": (
        "e-m", {**B999, "m_init_scale": 3.0}),
    # plain cross-entropy: focal loss (gamma 2) weighs the tokens already right at almost nothing,
    # which may let their margins be traded away at long N
    "init x30, lr 0.3, cosine 5000": ("e-m", {**X30, **COSINE, "decay_steps": 5000}),
    "init x30, lr 0.3, focal 2, plateau 100": ("e-m", {**RECOMMENDED, "plateau_after": 100}),
    "init x30, lr 0.3, focal 2, plateau 50": ("e-m", {**RECOMMENDED, "plateau_after": 50}),
    # a fit stalled for 300 steps has had 6 cuts (lr / 64): start it afresh rather than let it freeze
    "init x30, lr 0.3, focal 2, plateau 50, restarts": (
        "e-m", {**RECOMMENDED, "plateau_after": 50, "restarts": 3, "restart_after": 300}),
    # the cuts stop at lr / 8 (0.0375): a fit stalled for good keeps moving instead of freezing
    "init x30, lr 0.3, focal 2, plateau 50, floor 1/8": (
        "e-m", {**RECOMMENDED, "plateau_after": 50, "plateau_min": 0.125}),
    "init x30, lr 0.3, focal 2, plateau 50, floor 1/4": (
        "e-m", {**RECOMMENDED, "plateau_after": 50, "plateau_min": 0.25}),
    # a warm restart: after 5 (3) cuts, the next stall puts the rate back to 0.3, vectors kept
    "init x30, lr 0.3, focal 2, plateau 50, cycle 5": (
        "e-m", {**RECOMMENDED, "plateau_after": 50, "plateau_cycle": 5}),
    "init x30, lr 0.3, focal 2, plateau 50, cycle 3": (
        "e-m", {**RECOMMENDED, "plateau_after": 50, "plateau_cycle": 3}),
    "init x30, lr 0.1, focal 2": ("e-m", {"init_scale": 30.0, "lr": 0.1, "focal_gamma": 2.0}),
    "init x100, lr 1": ("e-m", {"init_scale": 100.0, "lr": 1.0}),
    "embedding-std x75": ("e-m", {"init": "embedding", "init_scale": 75.0, "lr": 0.1}),
    "token embedding x75": ("e-m", {"init": "tokens", "init_scale": 75.0, "lr": 0.1}),
    "large-init, cosine": ("e-m", {**LARGE, **COSINE}),
    "large-init, focal 2": ("e-m", {**LARGE, "focal_gamma": 2.0}),
    "large-init, restarts": ("e-m", {**LARGE, "restarts": 3, "restart_after": 60}),
    "large-init, no weight decay": ("e-m", {**LARGE, "weight_decay": 0.0}),
    "large-init, betas (0.9, 0.99)": ("e-m", {**LARGE, "betas": (0.9, 0.99)}),
}


# what a --json file's rows depend on: a rerun resumes the file only if all of these match
SETTINGS = ("model", "dtype", "tokens", "texts", "seeds", "steps", "share_m")
OLD_DEFAULTS = {"share_m": 1}  # files written before the setting existed


def median_steps(steps: list[int | None], budget: int) -> str:
    """Median steps to 100%, a failure counted as above the budget ("> budget" if the median is one)."""
    med = statistics.median(s if s is not None else math.inf for s in steps)
    return f"> {budget}" if med > budget else f"{med:g}"


def summarise(rows: list[dict], budget: int) -> dict:
    """The table's figures for one variant's rows."""
    done = [r["steps"] if r["accuracy"] >= 1.0 else None for r in rows]
    return {"exact": sum(s is not None for s in done), "fits": len(rows), "median_steps": median_steps(done, budget),
            "mean_accuracy": statistics.fmean(r["accuracy"] for r in rows),
            "first_token_right": statistics.fmean(r["correct"][0] == "1" for r in rows)}


def run_variant(lm: pt.FrozenLM, name: str, ids: list[list[int]], steps: int, seeds: int, share_m: int = 1) -> dict:
    arrangement, changes = VARIANTS[name]
    recipe = pt.get_recipe("paper", max_steps=steps, **changes).replace(name=name)
    t = time.perf_counter()
    fit = pt.fit_token_ids(lm, ids, seeds=seeds, arrangement=arrangement, recipe=recipe, share_m=share_m)
    secs = time.perf_counter() - t
    rows = [{"text": i // seeds, "seed": r.seed, "n_tokens": r.n_tokens, "accuracy": r.accuracy,
             "steps": r.steps, "status": r.status, "restarts": r.restarts,
             "correct": "".join("1" if c else "0" for c in r.correct)} for i, r in enumerate(fit.rows)]
    return {"variant": name, "arrangement": arrangement, "recipe": recipe.to_dict(), "rows": rows, "seconds": secs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tokens", type=int, default=32, help="N: the first N tokens of each passage")
    ap.add_argument("--texts", type=int, default=4, help="Gutenberg passages")
    ap.add_argument("--seeds", type=int, default=1, help="fits per text (seeds 0..K-1)")
    ap.add_argument("--steps", type=int, default=300, help="step budget per fit")
    ap.add_argument("--share-m", type=int, default=1, choices=(0, 1),
                    help="1: every fit has its own m; 0: one m shared by all texts and seeds")
    ap.add_argument("--variants", nargs="+", help="run only these variants (exact names; default: all)")
    ap.add_argument("--list", action="store_true", help="list the variants and exit")
    ap.add_argument("--json", help="write every row here; variants already in it (same settings) are not rerun")
    args = ap.parse_args()
    names = args.variants or list(VARIANTS)
    unknown = [n for n in names if n not in VARIANTS]
    if args.list or unknown:
        if unknown:
            print(f"error: unknown variant(s) {', '.join(map(repr, unknown))}", file=sys.stderr)
        for n, (arr, ch) in VARIANTS.items():
            print(f"{n!r}: {arr} {ch}")
        sys.exit(2 if unknown else 0)
    try:
        lm = pt.load_model(args.model, device=args.device, dtype=args.dtype)
    except pt.PrototokensError as e:
        sys.exit(f"error: {e}")
    ids = [data.prefix_tokens(lm, t.text, args.tokens) for t in data.load_texts("gutenberg", args.texts, 0)]
    emb_std = embedding_stats(lm)[1]  # what init="embedding" scales by: it differs a lot between models
    out = {"model": lm.name, "device": str(lm.device), "dtype": str(lm.dtype), "tokens": args.tokens,
           "texts": args.texts, "seeds": args.seeds, "steps": args.steps, "share_m": args.share_m,
           "embedding_std": emb_std, "results": []}
    print(f"# recipe ablation: {lm.name} ({lm.device}, {lm.dtype}), {args.texts} Gutenberg texts x "
          f"{args.seeds} seed(s), N={args.tokens}, budget {args.steps} steps, "
          f"{'own m' if args.share_m else 'one shared m'}; "
          f"input embedding std {emb_std:.3f} per coordinate\n")
    print("| variant | arrangement | 100% | median steps to 100% | mean accuracy | first token right | seconds |")
    print("|---|---|---|---|---|---|---|", flush=True)
    done = {}
    if args.json and os.path.isfile(args.json):
        with open(args.json) as f:
            old = json.load(f)
        # a file from other settings is refused, never overwritten: it holds measured results
        have = {k: old.get(k, OLD_DEFAULTS.get(k)) for k in SETTINGS}
        differ = [f"{k} {have[k]} here, {out[k]} asked" for k in SETTINGS if have[k] != out[k]]
        if differ:
            sys.exit(f"error: {args.json} holds a run with other settings ({'; '.join(differ)}); "
                     "name another --json file")
        done = {r["variant"]: r for r in old["results"]}
        out["results"] = old["results"]  # every stored variant stays in the file, also if this run is stopped
    for name in names:
        res = done.get(name) or run_variant(lm, name, ids, args.steps, args.seeds, args.share_m)
        res.update(summarise(res["rows"], args.steps))  # also for stored rows, so the rule is always today's
        out["results"] = [r for r in out["results"] if r["variant"] != name] + [res]
        print(f"| {name} | {res['arrangement']} | {res['exact']}/{res['fits']} | {res['median_steps']} | "
              f"{res['mean_accuracy']:.3f} | {res['first_token_right']:.2f} | {res['seconds']:.0f} |", flush=True)
        if args.json:  # after every variant, so a stopped run keeps what it measured
            write_json(args.json, out)


if __name__ == "__main__":
    main()
