"""The `prototokens` command line: fit, decode, eval, models, demo."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
import time
from pathlib import Path

from .errors import PrototokensError

SAMPLE_TEXT = "The quick brown fox jumps over the lazy dog."


def _lazy():
    """Import the heavy machinery (torch, transformers) only once arguments are parsed."""
    import prototokens as pt

    return pt


def _emit(args: argparse.Namespace, obj: dict, human: str) -> None:
    print(json.dumps(obj, ensure_ascii=False) if args.json else human)


def _read_text(args: argparse.Namespace) -> str:
    if args.text is not None:
        return args.text
    path = Path(args.file)
    if not path.is_file():
        raise PrototokensError(f"no such file: {path}")
    try:
        return path.read_text(encoding="utf-8").rstrip("\n")
    except UnicodeDecodeError:
        raise PrototokensError(f"{path} is not UTF-8 text") from None


def _recipe(pt, args: argparse.Namespace):
    recipe = pt.get_recipe(args.recipe, max_steps=args.steps, lr=args.lr, init=args.init,
                           init_scale=args.init_scale, m_init_scale=args.m_init_scale,
                           schedule=args.schedule, warmup_steps=args.warmup_steps,
                           decay_steps=args.decay_steps, patience=args.patience,
                           restarts=args.restarts, restart_after=args.restart_after, focal_gamma=args.focal_gamma,
                           plateau_after=args.plateau_after, plateau_factor=args.plateau_factor,
                           plateau_min=args.plateau_min, plateau_cycle=args.plateau_cycle,
                           weight_decay=args.weight_decay, betas=args.betas, phase_steps=args.phase_steps,
                           phase_lr=args.phase_lr, phase_weight_decay=args.phase_weight_decay)
    if (recipe.schedule != "constant" and recipe.min_lr_ratio == 0 and recipe.max_steps > recipe.decay_end
            and recipe.phase_steps is None):
        print(f"prototokens: note: recipe {recipe.name!r} decays its rate to 0 by step {recipe.decay_end}, so "
              f"steps after it change nothing (raise --decay-steps with --steps)", file=sys.stderr)
    return recipe


def _share(value: str) -> int:
    if value == "all":
        return 0
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a group size or 'all', got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError("group size must be >= 1 (or 'all')")
    return n


def _seconds_or_off(value: str) -> float | None:
    if value == "off":
        return None
    try:
        s = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or 'off', got {value!r}") from None
    if not s >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0 seconds (or 'off'), got {value}")
    return s


def _snapshot_option(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--snapshot-every", type=_seconds_or_off, default=300.0, metavar="SECONDS|off",
                   help=f"seconds between snapshots of {what}, so that a killed run resumes it at the step it "
                        "had reached (default 300; 0: after every stop check; off: none)")


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _fit_summary(fit, n_texts: int) -> dict:
    best = fit.rows[fit.best_row()]
    return {
        "accuracy": best.accuracy, "c_tokens": best.c_tokens, "n_tokens": best.n_tokens,
        "steps": best.steps, "status": best.status, "seconds": round(fit.seconds, 3),
        "model": fit.model_name, "arrangement": fit.arrangement, "recipe": fit.recipe["name"],
        "rows": [{"seed": r.seed, "accuracy": r.accuracy, "c_tokens": r.c_tokens, "n_tokens": r.n_tokens,
                  "steps": r.steps, "status": r.status} for r in fit.rows],
    }


def cmd_fit(args: argparse.Namespace) -> int:
    text = _read_text(args)
    out = Path(args.out)
    if out.parent and not out.parent.exists():
        raise PrototokensError(f"output directory does not exist: {out.parent}")
    pt = _lazy()
    recipe = _recipe(pt, args)
    pt.get_arrangement(args.arrangement)
    start = pt.ProtoTokens.load(args.init_from) if args.init_from else None
    lm = pt.load_model(args.model, device=args.device, dtype=args.dtype)
    snaps = None
    if args.snapshot and args.snapshot_every is not None:
        snaps = pt.Snapshots(args.snapshot, args.snapshot_every)
    fit = pt.fit(lm, [text], seeds=args.seeds, arrangement=args.arrangement, recipe=recipe,
                 share_m=args.share_m, progress=not args.quiet, snapshots=snaps, init_from=start)
    fit.save(out)
    s = _fit_summary(fit, 1)
    s["out"] = str(out)
    best = fit.rows[fit.best_row()]
    _emit(args, s, f"fitted {best.n_tokens} tokens on {lm.name}: accuracy {best.accuracy:.3f} "
                   f"({best.c_tokens}/{best.n_tokens}), {best.steps} steps, {fit.seconds:.1f} s, "
                   f"{best.status}; saved {out}")
    return 0


def _load_for(pt, args: argparse.Namespace):
    """The saved fit and its model, by default in the dtype it was fitted in: another one changes tokens."""
    fit = pt.ProtoTokens.load(args.file)
    dtype = fit.dtype if args.dtype == "auto" and fit.dtype else args.dtype
    lm = pt.load_model(args.model or fit.model_name, device=args.device, dtype=dtype)
    if fit.dtype and pt.dtype_name(lm.dtype) != fit.dtype:
        print(f"note: {args.file} was fitted in {fit.dtype}, this model runs in {pt.dtype_name(lm.dtype)}; "
              "decoded tokens can differ (docs/recipe.md, 'Precision')", file=sys.stderr)
    return fit, lm


def cmd_decode(args: argparse.Namespace) -> int:
    pt = _lazy()
    fit, lm = _load_for(pt, args)
    row = fit.best_row() if args.row is None else args.row
    t = time.perf_counter()
    ids = pt.decode(lm, fit, row)
    secs = time.perf_counter() - t
    text = lm.decode(ids)
    target = fit.rows[row].token_ids
    wrong = [i for i, (a, b) in enumerate(zip(ids, target, strict=True)) if a != b]
    out = {"text": text, "token_ids": ids, "row": row, "exact": not wrong, "wrong_positions": wrong, "seconds": secs}
    human = text
    if args.margins is not None:
        tightest = sorted(pt.token_margins(lm, fit, row), key=lambda r: r["margin"])[:args.margins]
        out["margins"] = [{**r, "target_text": lm.decode([r["target"]]), "predicted_text": lm.decode([r["predicted"]])}
                          for r in tightest]
        human += "\n" + "\n".join(
            f"position {r['position']}: target {r['target_text']!r} p={r['p_target']:.3f}, margin {r['margin']:+.3f}"
            + ("" if r["margin"] > 0 else f" (decodes {r['predicted_text']!r})") for r in out["margins"])
    _emit(args, out, human)
    return 0


def cmd_eval(args: argparse.Namespace) -> int:
    pt = _lazy()
    fit, lm = _load_for(pt, args)
    rows = pt.evaluate(lm, fit)
    best = max(rows, key=lambda r: r["accuracy"])
    lines = [f"row {r['row']} (seed {r['seed']}): accuracy {r['accuracy']:.3f} ({r['c_tokens']}/{r['n_tokens']}), "
             f"C_tokens {r['c_tokens']}, H_LM {r['h_lm_nats']:.1f} nats ({r['h_lm_bits']:.1f} bits)" for r in rows]
    _emit(args, {**{k: best[k] for k in ("accuracy", "c_tokens", "n_tokens", "h_lm_nats", "h_lm_bits")},
                 "rows": rows}, "\n".join(lines))
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from .loading import model_names

    if args.install:
        from .bundled import install_gguf

        name, path = args.install
        print(f"cached {name} in {install_gguf(name, path)}")
        return 0
    rows = model_names()
    if args.json:
        print(json.dumps([{"name": n, "description": d, "status": s} for n, d, s in rows]))
    else:
        width = max(len(n) for n, _, _ in rows)
        for n, d, s in rows:
            print(f"{n:<{width}}  {d}  [{s}]")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    pt = _lazy()
    print(f"prototokens demo: fit one text on {args.model}, then rebuild it in ONE forward pass.\n")
    lm = pt.load_model(args.model, device=args.device)
    ids = lm.encode(args.text)
    print(f"model       {lm.name} ({sum(p.numel() for p in lm.model.parameters()) / 1e6:.0f}M parameters, "
          f"frozen, {lm.device}, {str(lm.dtype).removeprefix('torch.')})")
    print(f"text        {args.text!r}  ({len(ids)} tokens)")
    recipe = pt.get_recipe(args.recipe, max_steps=args.steps)
    arr = pt.get_arrangement(args.arrangement)
    print(f"training    two vectors e, m as {arr.notation}; recipe '{recipe.name}', at most {recipe.max_steps} steps")
    fit = pt.fit(lm, [args.text], arrangement=arr, recipe=recipe, progress=True)
    row = fit.rows[0]
    print(f"fitted      accuracy {row.accuracy:.3f} ({row.c_tokens}/{row.n_tokens} tokens) after {row.steps} steps "
          f"in {fit.seconds:.1f} s ({row.status})")
    out = Path(args.out)
    fit.save(out)
    again = pt.ProtoTokens.load(out)
    t = time.perf_counter()
    got = pt.decode(lm, again)
    secs = time.perf_counter() - t
    print(f"saved       {out} ({out.stat().st_size} bytes: e and m, {lm.hidden_size} floats each, plus header)")
    print(f"decoded     {lm.decode(got)!r}  (one forward pass, {secs * 1000:.0f} ms)")
    print(f"exact       {'yes' if got == ids else 'no'}")
    return 0 if got == ids or not args.strict else 1


def _grid_overrides(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", metavar="MODEL", help="override the config's models")
    p.add_argument("--sources", nargs="+", metavar="SOURCE", help="override the config's text sources")
    p.add_argument("--texts", type=_positive, metavar="K",
                   help="override the config's texts per source (the first K of a source do not depend on K)")
    p.add_argument("--share-m", nargs="+", type=_share, metavar="K|all",
                   help="override the config's m sharing: texts per group sharing one m (1: own m; all: one m)")


def _run_sweep(cfg, args: argparse.Namespace) -> int:
    from .sweep import Sweep, init_distributed

    init_distributed()
    run_dir = Path(args.run or Path("runs") / cfg.name)
    counts = Sweep(cfg, run_dir, snapshot_every=args.snapshot_every).run(progress=not args.quiet)
    _emit(args, {"run": str(run_dir), **counts},
          f"{cfg.name}: {counts['units_run']} unit(s) fitted, {counts['units_skipped']} already done, "
          f"{counts['rows_added']} row(s) added; results in {run_dir}/results.sqlite")
    return 0


def _with_overrides(cfg, args: argparse.Namespace):
    """The config with the command line's --device, --dtype, --recipe, --steps, --models, --sources,
    --texts and --share-m applied."""
    import dataclasses

    overrides = dict(cfg.overrides)  # the config's own settings (a step budget) apply to any recipe
    if args.steps is not None:
        overrides["max_steps"] = args.steps
    changes = {"device": args.device, "dtype": args.dtype, "recipe": args.recipe,
               "models": tuple(args.models) if args.models else None,
               "sources": tuple(args.sources) if args.sources else None, "texts": args.texts,
               "share_m": tuple(args.share_m) if args.share_m else None}
    cfg = dataclasses.replace(cfg, overrides=overrides, **{k: v for k, v in changes.items() if v})
    cfg.recipe_obj()  # fail early on a bad recipe or step count
    return cfg


def cmd_sweep(args: argparse.Namespace) -> int:
    from .sweep import SweepConfig

    return _run_sweep(_with_overrides(SweepConfig.from_toml(args.config), args), args)


def cmd_experiment(args: argparse.Namespace) -> int:
    from . import experiments

    if args.list:
        for name in experiments.names():
            print(name)
        return 0
    if not args.name:
        raise PrototokensError("name an experiment (see --list)")
    return _run_sweep(_with_overrides(experiments.load(args.name, args.scale), args), args)


def cmd_geometry(args: argparse.Namespace) -> int:
    from . import geometry

    if args.action == "build":
        pt = _lazy()
        lm = pt.load_model(args.model, device=args.device, dtype=args.dtype)
        recipe = pt.get_recipe(args.recipe, max_steps=args.steps)
        fs = geometry.build_fit_set(lm, args.contexts, args.continuations, args.tokens, args.seeds, args.dir,
                                    recipe=recipe, seed=args.seed, progress=not args.quiet)
        print(f"fit set in {args.dir}: {len(fs.solutions)} solutions")
        return 0
    options = {"bezier": {"steps": args.bezier_steps, "lr": args.bezier_lr, "taus_per_step": args.bezier_taus,
                          "max_texts": args.bezier_texts, "max_pairs_per_text": args.bezier_pairs}}
    summary = geometry.run_geometry(args.dir, args.out or args.dir, args.analyses, device=args.device,
                                    dtype=args.dtype, min_accuracy=args.min_accuracy, options=options)
    print(json.dumps(summary, indent=1) if args.json else f"wrote {Path(args.out or args.dir) / 'geometry.json'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report

    out = write_report(args.run)
    print(f"wrote {out}")
    return 0


EXAMPLES = {
    "fit": """
        examples:
          prototokens fit --text "The quick brown fox jumps over the lazy dog." --out fox.safetensors
          prototokens fit --file poem.txt --seeds 4 --steps 2000 --json --out poem.safetensors
          prototokens fit --text "hello" --model tiny-random-llama --arrangement "[e][m]xN" --out h.safetensors
          prototokens fit --file poem.txt --init-from poem.safetensors --lr 0.03 --out poem2.safetensors
    """,
    "decode": """
        examples:
          prototokens decode fox.safetensors
          prototokens decode fox.safetensors --json
          prototokens decode fox.safetensors --margins 5
    """,
    "eval": """
        examples:
          prototokens eval fox.safetensors
          prototokens eval fox.safetensors --json
    """,
    "models": """
        examples:
          prototokens models
          prototokens models --json
          prototokens models --install smollm2-135m SmolLM2-135M-Instruct.Q4_1.gguf   # offline machine
    """,
    "sweep": """
        examples:
          prototokens sweep my-sweep.toml --run runs/my-sweep
          torchrun --nproc_per_node 4 -m prototokens.cli sweep my-sweep.toml --run runs/my-sweep
    """,
    "experiment": """
        examples:
          prototokens experiment --list
          prototokens experiment table1 --run runs/table1
          prototokens experiment table3 --scale cpu --run runs/table3-cpu
    """,
    "report": """
        examples:
          prototokens report runs            # every run directory under runs/
          prototokens report runs/table1
    """,
    "geometry": """
        examples:
          prototokens geometry build runs/geometry --contexts 50 --continuations 10 --tokens 32 --seeds 10
          prototokens geometry run runs/geometry                 # all analyses: JSON + PNGs
          prototokens geometry run runs/geometry --analyses distances interpolation
    """,
    "demo": """
        examples:
          prototokens demo
          prototokens demo --text "Hello, world." --model tiny-random-llama
    """,
}


def _sub(subs, name: str, helptext: str) -> argparse.ArgumentParser:
    return subs.add_parser(name, help=helptext, description=helptext,
                           epilog=textwrap.dedent(EXAMPLES[name]),
                           formatter_class=argparse.RawDescriptionHelpFormatter)


def _runtime(p: argparse.ArgumentParser, model_default: str | None) -> None:
    p.add_argument("--model", default=model_default,
                   help="built-in name (see `prototokens models`), local directory, .gguf file or hub id"
                   + (f" (default: {model_default})" if model_default else " (default: the one in the file)"))
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 ... (default: auto)")
    p.add_argument("--dtype", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="model dtype; proto-tokens stay fp32 (default: "
                   + ("" if model_default else "the one the fit ran in, else ") + "bf16 on GPU, fp32 on CPU)")


def build_parser() -> argparse.ArgumentParser:
    from .arrangements import ARRANGEMENTS
    from .bundled import DEFAULT_MODEL
    from .recipes import DEFAULT_RECIPE, INITS, RECIPES, SCHEDULES

    arr_help = "; ".join(f"{a.name} = {a.notation}" for a in ARRANGEMENTS.values())
    parser = argparse.ArgumentParser(
        prog="prototokens",
        description="One-step text generation with frozen language models: fit two vectors [e, m] so "
                    "that one forward pass of a frozen LM emits a whole text.",
        epilog="Run `prototokens COMMAND --help` for each command's options and examples.",
    )
    subs = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _sub(subs, "fit", "fit proto-tokens for one text and save them")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--text", help="the text to fit")
    src.add_argument("--file", help="a UTF-8 file whose whole content is the text")
    _runtime(p, DEFAULT_MODEL)
    p.add_argument("--arrangement", default="e-m", help=f"input layout (default: e-m). {arr_help}")
    p.add_argument("--recipe", default=DEFAULT_RECIPE, choices=sorted(RECIPES),
                   help=f"optimisation recipe (default: {DEFAULT_RECIPE}; 'paper' for the paper's own)")
    p.add_argument("--steps", type=int, help="maximum optimisation steps (recipe default: 5000)")
    p.add_argument("--lr", type=float, help="learning rate (recipe default)")
    p.add_argument("--init", choices=INITS, help="initialisation (recipe default)")
    p.add_argument("--init-scale", type=float, help="initialisation scale (recipe default)")
    p.add_argument("--m-init-scale", type=float, help="initialisation scale of m alone (recipe default: --init-scale)")
    p.add_argument("--schedule", choices=SCHEDULES, help="learning-rate schedule (recipe default)")
    p.add_argument("--warmup-steps", type=int, help="steps of linear warm-up before the schedule (recipe default)")
    p.add_argument("--decay-steps", type=_positive,
                   help="the step at which the schedule's decay ends (recipe default: the --steps budget)")
    p.add_argument("--patience", type=_positive, help="stop after this many steps without improvement")
    p.add_argument("--restarts", type=int, help="re-initialise a stalled fit at most this many times (recipe default)")
    p.add_argument("--restart-after", type=_positive, help="steps without improvement before a restart")
    p.add_argument("--focal-gamma", type=float, help="focal loss shaping exponent (recipe default: 0 = plain CE)")
    p.add_argument("--weight-decay", type=float, help="AdamW's decoupled weight decay (recipe default; the paper: 0.01)")
    p.add_argument("--betas", type=float, nargs=2, metavar=("B1", "B2"),
                   help="AdamW's betas (recipe default; the paper: 0.9 0.9)")
    p.add_argument("--plateau-after", type=_positive,
                   help="multiply a fit's learning rate by --plateau-factor after this many steps without improvement")
    p.add_argument("--plateau-factor", type=float, help="learning-rate factor of --plateau-after (recipe default: 0.5)")
    p.add_argument("--plateau-min", type=float,
                   help="never cut a fit's learning rate below this fraction of --lr (recipe default: 0, no floor)")
    p.add_argument("--plateau-cycle", type=_positive,
                   help="after this many cuts, the next stall resets a fit's rate to --lr (a warm restart)")
    p.add_argument("--phase-steps", type=_positive,
                   help="after --decay-steps, low-rate phases of this many steps, each from the best state so far "
                        "with a fresh optimiser state")
    p.add_argument("--phase-lr", type=float, help="peak learning rate of the phases (recipe default: --lr / 10)")
    p.add_argument("--phase-weight-decay", type=float,
                   help="AdamW's weight decay in the phases (recipe default: --weight-decay)")
    p.add_argument("--seeds", type=_positive, default=1, help="independent fits (seeds 0..K-1), all saved")
    p.add_argument("--share-m", type=_share, default=1, metavar="K|all",
                   help="seeds per group sharing one m (default 1: each its own)")
    p.add_argument("--out", required=True, help="output .safetensors file")
    p.add_argument("--init-from", metavar="FILE",
                   help="start from the e and m of a saved fit (same model and vector counts) instead of --init: "
                        "a warm start, e.g. a second phase under another recipe")
    p.add_argument("--snapshot", metavar="FILE",
                   help="save the fit's progress to FILE as it goes and, if FILE holds a snapshot of this fit, "
                        "resume from it (deleted once the fit is done)")
    _snapshot_option(p, "--snapshot's fit")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_fit)

    for name, helptext, func in [("decode", "decode saved proto-tokens in one forward pass", cmd_decode),
                                 ("eval", "accuracy, C_tokens and H_LM of saved proto-tokens", cmd_eval)]:
        p = _sub(subs, name, helptext)
        p.add_argument("file", help="a .safetensors file written by `prototokens fit`")
        _runtime(p, None)
        if name == "decode":
            p.add_argument("--row", type=int, help="row (seed) to decode (default: the most accurate)")
            p.add_argument("--margins", type=_positive, metavar="K",
                           help="also list the K positions decoded least securely: the target's probability "
                                "and its logit margin over the best other token (negative: wrong)")
        p.add_argument("--json", action="store_true", help="print one JSON object on stdout")
        p.set_defaults(func=func)

    p = _sub(subs, "models", "list the built-in model names and whether they are cached")
    p.add_argument("--json", action="store_true")
    p.add_argument("--install", nargs=2, metavar=("NAME", "GGUF"),
                   help="cache built-in model NAME from a local copy of its GGUF file (checked by sha256)")
    p.set_defaults(func=cmd_models)

    p = _sub(subs, "sweep", "run (or resume) a sweep config into a run directory")
    p.add_argument("config", help="a TOML sweep config (see docs/experiments.md)")
    p.add_argument("--run", help="run directory (default: runs/NAME)")
    p.add_argument("--device", help="override the config's device")
    p.add_argument("--dtype", help="override the config's dtype")
    p.add_argument("--json", action="store_true")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="override the config's recipe (its overrides still apply)")
    p.add_argument("--steps", type=_positive, help="override the recipe's maximum steps")
    _grid_overrides(p)
    _snapshot_option(p, "the fit in flight")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=cmd_sweep)

    p = _sub(subs, "experiment", "run (or resume) one of the paper's registered experiments")
    p.add_argument("name", nargs="?", help="experiment name (see --list)")
    p.add_argument("--list", action="store_true", help="list the registered experiments")
    p.add_argument("--scale", default="full", choices=["full", "cpu"], help="full (paper scale) or cpu (scaled down)")
    p.add_argument("--run", help="run directory (default: runs/NAME)")
    p.add_argument("--device")
    p.add_argument("--dtype")
    p.add_argument("--json", action="store_true")
    p.add_argument("--recipe", choices=sorted(RECIPES), help="override the config's recipe (its overrides still apply)")
    p.add_argument("--steps", type=_positive, help="override the recipe's maximum steps")
    _grid_overrides(p)
    _snapshot_option(p, "the fit in flight")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_experiment)

    from .geometry import ANALYSES

    p = _sub(subs, "geometry", "Section 4 analyses: build a fit set of contexts x continuations, then analyse it")
    p.add_argument("action", choices=["build", "run"], help="build a fit set, or run analyses on one")
    p.add_argument("dir", help="the fit set's directory")
    p.add_argument("--model", default=DEFAULT_MODEL)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--contexts", type=_positive, default=50, help="Gutenberg contexts (paper: 50)")
    p.add_argument("--continuations", type=_positive, default=10, help="continuations per context (paper: 10)")
    p.add_argument("--tokens", type=_positive, default=32, help="tokens per continuation")
    p.add_argument("--seeds", type=_positive, default=10, help="seeds for the last continuation (paper: 10)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--recipe", default=DEFAULT_RECIPE, choices=sorted(RECIPES),
                   help=f"optimisation recipe (default: {DEFAULT_RECIPE})")
    p.add_argument("--steps", type=int, help="maximum fitting steps (recipe default)")
    p.add_argument("--analyses", nargs="+", choices=ANALYSES, help="default: all")
    p.add_argument("--out", help="where analyses write (default: the fit set's directory)")
    p.add_argument("--min-accuracy", type=float, default=1.0,
                   help="analyse only solutions at least this accurate (default 1.0: exact ones, as the paper)")
    p.add_argument("--bezier-steps", type=int, default=300)
    p.add_argument("--bezier-lr", type=float, default=0.01)
    p.add_argument("--bezier-taus", type=_positive, default=8, help="random curve points per pair per step")
    p.add_argument("--bezier-texts", type=_positive, default=5, help="texts with several seeds to connect (paper: 5)")
    p.add_argument("--bezier-pairs", type=_positive, help="at most this many seed pairs per text (default: all)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_geometry)

    p = _sub(subs, "report", "write a Markdown report with figures from run directories")
    p.add_argument("run", help="a run directory, or a directory of run directories")
    p.set_defaults(func=cmd_report)

    p = _sub(subs, "demo", "fit a sample text, decode it in one pass, and say what happened")
    p.add_argument("--model", default=DEFAULT_MODEL, help=f"model (default: {DEFAULT_MODEL})")
    p.add_argument("--device", default="auto")
    p.add_argument("--text", default=SAMPLE_TEXT, help="text to fit")
    # with the paper's recipe the first token of this sentence is never learnt (docs/recipe.md)
    p.add_argument("--recipe", default=DEFAULT_RECIPE, choices=sorted(RECIPES),
                   help=f"recipe (default: {DEFAULT_RECIPE})")
    p.add_argument("--arrangement", default="e-m", help="input layout (default: e-m = [e][m]x(N-1))")
    p.add_argument("--steps", type=int, help="maximum steps (recipe default)")
    p.add_argument("--out", default="demo.safetensors", help="where to save the fit")
    p.add_argument("--strict", action="store_true", help="exit 1 unless the decoding is exact")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: one-line errors and a non-zero exit for bad input, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except PrototokensError as e:
        print(f"prototokens: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("prototokens: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # an unforeseen failure: still one line, with a way to see more
        if os.environ.get("PROTOTOKENS_DEBUG"):
            raise
        first = (str(e).splitlines() or [""])[0]
        print(f"prototokens: internal error: {type(e).__name__}: {first} (set PROTOTOKENS_DEBUG=1 for a traceback)",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
