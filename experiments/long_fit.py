"""One long fit of one Gutenberg passage, with its trajectory: the best number of correct tokens
over the steps and the norms of `e` and `m`, saved as it goes (docs/recipe.md, issue #6).

It is the probe for a single length the capacity search failed at: the same text (the first N
tokens of Gutenberg passage --text, as `prototokens experiment capacity` takes them), seed 0 and
arrangement `[e][m]x(N-1)`, under a named recipe with fields changed by --set. The fit resumes
from its snapshot (JSON path + ".pt") after a kill, step for step, so a fit longer than a session
can be run in pieces; the trajectory gains a point at every snapshot (--every seconds). The
fitted vectors (the best state) are saved beside the JSON, as .safetensors. --init-from starts
from such a file instead of the recipe's initialisation: a second phase under another recipe.
--texts K fits K passages from --text on together (each its own `e` and `m`, one batch), to see
whether what a phase does to one text holds for others.

    python experiments/long_fit.py --model gemma3-270m --tokens 181 --recipe recommended-cosine \
        --set lr=0.1 --json docs/results/recipe/long_gemma_n181_lr0.1.json

A finished JSON is not rerun; one from other settings is refused, never overwritten.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import prototokens as pt
from prototokens import data
from prototokens.files import write_json
from prototokens.recipes import get_recipe
from prototokens.snapshots import Snapshots

SETTINGS = ("model", "dtype", "tokens", "text", "text_id", "text_ids", "recipe", "arrangement", "init_from")


def parse_set(items: list[str]) -> dict:
    """`key=value` pairs; values are read as JSON where they parse (numbers, lists), else as strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise pt.PrototokensError(f"--set takes key=value, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


class TrajectorySnapshots(Snapshots):
    """Snapshots that also add a point (step, best correct tokens, its step, seconds, the current norms of
    `e` and `m`) to `out` and write it to `json_path` at every save."""

    def __init__(self, out: dict, json_path: str, every_s: float):
        super().__init__(json_path + ".pt", every_s, stale="error")
        self.out, self.json_path = out, json_path

    def save(self, state: dict) -> None:
        super().save(state)
        run = state.get("run")
        if run is not None:
            t = run["tensors"]
            per_text = t["best_correct"].sum(dim=1).tolist()
            point = {"step": int(run["next_step"]), "best_correct": sum(per_text),
                     "best_step": int(t["best_step"].max()), "seconds": round(state["seconds"], 1),
                     "e_norm": round(float(run["E"].norm()), 1), "m_norm": round(float(run["M"].norm()), 1)}
            if len(per_text) > 1:  # several texts: the total above, and each text's count
                point["best_correct_per_text"] = per_text
            self.out["trajectory"].append(point)
            write_json(self.json_path, self.out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tokens", type=int, required=True, help="N: the first N tokens of the passage")
    ap.add_argument("--text", type=int, default=0, help="which Gutenberg passage (0: the first)")
    ap.add_argument("--texts", type=int, default=1, help="fit this many passages from --text on, together")
    ap.add_argument("--recipe", default="recommended-cosine")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="recipe fields to change, e.g. lr=0.1")
    ap.add_argument("--steps", type=int, help="step budget (the recipe's max_steps unless given)")
    ap.add_argument("--arrangement", default="e-m")
    ap.add_argument("--init-from", metavar="FILE",
                    help="start from the vectors of a saved fit (e.g. a long fit's .safetensors): a second phase")
    ap.add_argument("--every", type=float, default=60.0, help="seconds between snapshots (trajectory points)")
    ap.add_argument("--json", required=True, help="results and trajectory; its snapshot is this path + '.pt'")
    args = ap.parse_args()
    try:
        changes = parse_set(args.set)
        if args.steps is not None:
            changes["max_steps"] = args.steps
        if args.texts < 1:
            raise pt.PrototokensError(f"--texts must be at least 1, got {args.texts}")
        recipe = get_recipe(args.recipe).replace(**changes)
        lm = pt.load_model(args.model, device=args.device, dtype=args.dtype)
        texts = data.load_texts("gutenberg", args.text + args.texts, 0)[args.text:]
        ids = [data.prefix_tokens(lm, t.text, args.tokens) for t in texts]
        start = pt.ProtoTokens.load(args.init_from) if args.init_from else None
    except pt.PrototokensError as e:
        sys.exit(f"error: {e}")
    out = {"model": lm.name, "device": str(lm.device), "dtype": str(lm.dtype), "tokens": args.tokens,
           "text": args.text, "text_id": texts[0].id, "recipe": recipe.to_dict(), "arrangement": args.arrangement,
           "init_from": os.path.basename(args.init_from) if args.init_from else None, "trajectory": [], "result": None}
    if args.texts > 1:  # absent for one text, so that the files of one-text fits stay as they were
        out["text_ids"] = [t.id for t in texts]
    if os.path.isfile(args.json):
        with open(args.json) as f:
            old = json.load(f)
        differ = [k for k in SETTINGS if old.get(k) != out.get(k)]
        if differ:
            sys.exit(f"error: {args.json} holds a fit with other settings ({', '.join(differ)}); name another --json file")
        if old.get("result") is not None:
            print(json.dumps(old["result"]))
            return
        out["trajectory"] = old["trajectory"]
    print(f"# long fit: {lm.name} ({lm.device}, {lm.dtype}), {', '.join(t.id for t in texts)}, N={args.tokens}, recipe "
          f"{args.recipe} {changes or ''}, budget {recipe.max_steps} steps", flush=True)
    snaps = TrajectorySnapshots(out, args.json, args.every)
    try:
        fit = pt.fit_token_ids(lm, ids, recipe=recipe, arrangement=args.arrangement, snapshots=snaps,
                               init_from=start)
    except pt.PrototokensError as e:
        sys.exit(f"error: {e}")
    fit_file = os.path.splitext(args.json)[0] + ".safetensors"
    fit.save(fit_file)
    per_row = []
    for i, row in enumerate(fit.rows):
        e, m = fit.vectors(i)
        per_row.append({"e_norm": round(float(e.norm()), 1), "m_norm": round(float(m.norm()), 1),
                        "accuracy": row.accuracy, "correct": sum(row.correct), "steps": row.steps,
                        "status": row.status, "first_token_right": bool(row.correct[0])})
    if len(per_row) == 1:  # one text: the result's fields as they have always been
        out["result"] = {"fit_file": os.path.basename(fit_file), **per_row[0], "seconds": round(fit.seconds, 1)}
    else:
        out["result"] = {"fit_file": os.path.basename(fit_file), "seconds": round(fit.seconds, 1),
                         "texts": [{"text_id": t.id, **r} for t, r in zip(texts, per_row, strict=True)]}
    write_json(args.json, out)
    print(json.dumps(out["result"]))


if __name__ == "__main__":
    main()
