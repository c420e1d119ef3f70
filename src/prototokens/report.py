"""`prototokens report RUN`: the paper's tables and figures from our own runs, beside the paper's numbers.

RUN is a run directory (holding results.sqlite) or a directory of run directories. Each run is
recognised by its experiment name (table1, table2-e, table2-m, table3, table4, fig3-mem1,
fig3-mem2; a `-cpu` suffix marks a scaled-down run). Figure 4 (throughput) is computed from the
Table 3 and Figure 3 runs. Fits not yet finished are shown from their snapshots (`partial/*.pt`).
The report is written to RUN/report.md with PNGs under RUN/figures/.
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from importlib import resources
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from .arrangements import get_arrangement  # noqa: E402
from .errors import PrototokensError  # noqa: E402
from .files import write_atomic  # noqa: E402
from .store import ResultStore  # noqa: E402
from .sweep import SweepConfig, recipe_redefined, run_recipe_fields  # noqa: E402

SUCCESS = SweepConfig.success  # the success accuracy of a run without a config.json (0.99)

PAPER_SOURCE = {"random": "random", "gutenberg": "pg19", "unseen": "fanfics", "generated": "pg19_gen"}


def paper_tables() -> dict:
    return json.loads(resources.files("prototokens").joinpath("reference/paper-tables.json").read_text())


def _runs(root: Path) -> dict[str, list[dict]]:
    dirs = [root] if (root / "results.sqlite").exists() else sorted(p.parent for p in root.glob("*/results.sqlite"))
    if not dirs and not any(root.glob("**/geometry.json")):
        raise PrototokensError(f"no results.sqlite (or geometry.json) in {root} or its subdirectories")
    out: dict[str, list[dict]] = defaultdict(list)
    for d in dirs:
        path = d / "config.json"
        saved = json.loads(path.read_text()) if path.exists() else None
        store, label = ResultStore(d, create=False), _recipe_label(saved)
        top = max(saved["lengths"]) if saved and saved.get("lengths") else None  # the top of its length grid
        success = saved.get("success", SUCCESS) if saved else SUCCESS  # what this run's search counted as reached
        for r in store.rows():
            r = {**r, "grid_top": top, "success": success}
            if label:
                r = {**r, "recipe": label}
            if r["method"].startswith("memory") and not r["extra"].get("bos"):
                r = {**r, "method": r["method"] + "-nobos"}  # t_1 predicted at the last [mem] (before mem_bos)
            out[r["experiment"].removesuffix("-cpu")].append({**r, "cpu_scale": r["experiment"].endswith("-cpu")})
        store.close()
    return out


def _recipe_label(saved: dict | None) -> str | None:
    """For a run whose recipe has been redefined since it ran (`saved`: its config.json): the recipe's name
    now (or its old name, marked as such), so that its rows are not reported under the new meaning of
    their name."""
    if saved is None:
        return None
    redefined, now = recipe_redefined(saved)
    if not redefined:
        return None
    return now or f"{saved.get('recipe')} (former)"


def _ms(values: list[float]) -> str:
    if not values:
        return "–"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.2f} ± {sd:.2f}"


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def _scale_note(rows: list[dict]) -> str:
    models = sorted({r["model"] for r in rows})
    devices = sorted({r["extra"].get("device", "?") for r in rows})
    scale = "scaled-down CPU run" if any(r["cpu_scale"] for r in rows) else "full-scale run"
    recipes = sorted({r["recipe"] for r in rows})
    return (f"*{scale}; models: {', '.join(models)}; devices: {', '.join(devices)}; recipe: {', '.join(recipes)}; "
            f"{len(rows)} fits.*")


def _reached(r: dict) -> bool:
    """Whether a fit reached its run's success accuracy (the sweep's default for rows without one)."""
    return r["accuracy"] >= r.get("success", SUCCESS)


def _success(rows: list[dict]) -> str:
    """The success accuracies of `rows`' runs, for the report's text (one value in every run so far)."""
    return " or ".join(f"{s:g}" for s in sorted({r.get("success", SUCCESS) for r in rows}))


def capacities(rows: list[dict]) -> dict[tuple, dict[str, dict]]:
    """Per (model, source, share_m, method, recipe) and text: the largest N reached (accuracy >= its run's
    success accuracy) and its row."""
    out: dict[tuple, dict[str, dict]] = defaultdict(dict)
    for r in rows:
        group = (r["model"], r["source"], r["share_m"], r["method"], r["recipe"])
        best = out[group].get(r["text_id"])
        if _reached(r) and (best is None or r["n"] > best["n"]):
            out[group][r["text_id"]] = r
        elif best is None:
            out[group].setdefault(r["text_id"], None)
    return out


def section_table1(rows: list[dict], figs: Path, paper: dict) -> str:
    by = defaultdict(list)
    for r in rows:
        by[(r["recipe"], r["arrangement"], r["n"])].append(r["accuracy"])
    ns = sorted({r["n"] for r in rows})
    lines = [(rec, a) for rec in sorted({r["recipe"] for r in rows})
             for a in ["e", "e-then-m", "e-m-alt", "e-m-plus", "e-m"] if any(k[:2] == (rec, a) for k in by)]
    ours = [[get_arrangement(a).notation, rec] + [_ms(by[(rec, a, n)]) for n in ns] for rec, a in lines]
    p = paper["table1_arrangements"]
    theirs = [[name] + [f"{m:.2f} ± {s:.2f}" for m, s in vals] for name, vals in p["rows"].items()]
    fig, ax = plt.subplots(figsize=(6, 4))
    several = len({rec for rec, _ in lines}) > 1
    for rec, a in lines:
        have = [n for n in ns if by[(rec, a, n)]]
        ax.plot(have, [statistics.fmean(by[(rec, a, n)]) for n in have], marker="o",
                label=get_arrangement(a).notation + (f" ({rec})" if several else ""))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("N (target tokens)")
    ax.set_ylabel("token accuracy")
    ax.set_ylim(0, 1.05)
    ax.legend(fontsize=8)
    ax.set_title("Table 1: arrangements")
    fig.tight_layout()
    fig.savefig(figs / "table1.png", dpi=120)
    plt.close(fig)
    return (f"## Table 1: input arrangements\n\n{_scale_note(rows)}\n\nOurs (token accuracy, mean ± std over texts):\n\n"
            f"{_table(['arrangement', 'recipe'] + [f'N={n}' for n in ns], ours)}\n\nPaper ({p['setup']}):\n\n"
            f"{_table(['arrangement'] + [f'N={n}' for n in p['columns_N']], theirs)}\n\n![table1](figures/table1.png)\n")


def section_table2(kind: str, rows: list[dict], paper: dict) -> str:
    key = "share_e" if kind == "e" else "share_m"
    body = []
    for recipe, sg in sorted({(r["recipe"], r[key]) for r in rows}):
        sub = [r for r in rows if r[key] == sg and r["recipe"] == recipe]
        per_text = defaultdict(list)
        for r in sub:
            per_text[r["text_id"]].append(r["accuracy"])
        best = [max(v) for v in per_text.values()]
        body.append([sg, recipe, _ms(best), _ms([r["accuracy"] for r in sub]), len(per_text),
                     len({r["seed"] for r in sub})])
    p = paper["table2_sharing"]
    ref = p[f"shared_{kind}"]
    theirs = [[sg, f"{ref['max'][i][0]:.2f} ± {ref['max'][i][1]:.2f}", f"{ref['avg'][i][0]:.2f} ± {ref['avg'][i][1]:.2f}"]
              for i, sg in enumerate(p["columns_Sg"])]
    return (f"## Table 2: shared {kind} in groups of Sg texts\n\n{_scale_note(rows)} N = "
            f"{', '.join(str(n) for n in sorted({r['n'] for r in rows}))}.\n\nOurs:\n\n"
            f"{_table(['Sg', 'recipe', 'max (best seed per text)', 'avg (all seeds)', 'texts', 'seeds'], body)}\n\n"
            f"Paper ({p['setup']}):\n\n{_table(['Sg', 'max', 'avg'], theirs)}\n")


def _capacity_boxplot(data: list[list[int]], labels: list[str], title: str, path: Path, success: str) -> None:
    fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(data)), 4))
    ax.boxplot(data)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=7)
    ax.set_yscale("symlog", base=2, linthresh=1)  # capacities span 0 to the grid's top
    ax.set_ylim(bottom=0)  # a capacity is never negative: no mirrored half of the symlog axis
    ax.set_ylabel(f"capacity (max N with accuracy >= {success})")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def section_table3(rows: list[dict], figs: Path, paper: dict) -> str:
    caps, success = capacities(rows), _success(rows)
    body, labels, data = [], [], []
    for (model, source, share_m, _, recipe), texts in sorted(caps.items()):
        reached = [r for r in texts.values() if r is not None]
        c = [r["n"] if r else 0 for r in texts.values()]
        h = [r["h_lm_nats"] for r in reached]
        stats = f"{statistics.fmean(c):.1f} / {statistics.median(c):.0f} / {min(c)}–{max(c)}"
        body.append([model, source, _sharing(share_m), recipe, len(c), stats, _ms(h)])
        labels.append(f"{model}\n{source}, m {_sharing(share_m)}")
        data.append(c)
    p = paper["table3_capacity"]
    theirs = []
    for i, model in enumerate(p["models"]):
        for src, ref in p["C_tokens"].items():
            h = p["H_LM"][src][i]
            theirs.append([model, src, f"{ref[i][0]} / {ref[i][1]}", f"{h[0][0]:.0f} ± {h[0][1]:.0f} / {h[1][0]:.0f} ± {h[1][1]:.0f}"])
    _capacity_boxplot(data, labels, "Table 3: capacity per text", figs / "table3.png", success)
    return (f"## Table 3: capacity\n\n{_scale_note(rows)} Capacity = the largest N on the length grid "
            f"reached with accuracy >= {success} (0 if none).\n\nOurs:\n\n"
            f"{_table(['model', 'source', 'share m', 'recipe', 'texts', 'capacity mean / median / range', 'H_LM at capacity (nats)'], body)}"
            f"\n\nPaper ({p['setup']}; sources: pg19 = Gutenberg, fanfics = unseen, pg19_gen = generated):\n\n"
            f"{_table(['model', 'source', 'C_tokens (own m / shared m)', 'H_LM (own / shared)'], theirs)}\n\n"
            f"![table3](figures/table3.png)\n")


def _sharing(share_m: int) -> str:
    """How m is shared, in words: 1 = each text its own, 0 = one for all texts, k = groups of k."""
    return {0: "shared by all", 1: "own"}.get(share_m, f"shared by {share_m}")


def _unfinished(tried: list[dict]) -> bool:
    """Whether a text's capacity search has not ended: its longest fit so far succeeded, below the grid's top."""
    last = max(tried, key=lambda r: r["n"])
    return _reached(last) and last["grid_top"] is not None and last["n"] < last["grid_top"]


def section_capacity(rows: list[dict], figs: Path, paper: dict) -> str:
    """The recipe capacity search: per-text maxima and their summary, recipes side by side."""
    caps, success = capacities(rows), _success(rows)
    fits = defaultdict(list)
    for r in rows:
        fits[(r["model"], r["source"], r["share_m"], r["recipe"], r["text_id"])].append(r)
    summary, per_text, data, labels = [], [], [], []
    unfinished_any = False
    for (model, source, share_m, _, recipe), texts in sorted(caps.items()):
        sm = _sharing(share_m)
        c = [r["n"] if r else 0 for r in texts.values()]
        reached = [r for r in texts.values() if r is not None]
        open_ = sum(_unfinished(fits[(model, source, share_m, recipe, tid)]) for tid in texts)
        unfinished_any |= open_ > 0
        summary.append([model, source, sm, recipe, f"{len(c)}" + (f" ({open_} unfinished)" if open_ else ""),
                        f"{statistics.fmean(c):.1f}", f"{statistics.median(c):g}",
                        f"{min(c)}–{max(c)}", _ms([r["c_tokens"] for r in reached]),
                        _ms([r["h_lm_nats"] for r in reached])])
        data.append(c)
        labels.append(f"{model}\nm {sm}\n{recipe}")
        for tid, best in sorted(texts.items()):
            tried = sorted(fits[(model, source, share_m, recipe, tid)], key=lambda r: r["n"])
            last = tried[-1]
            searching = _unfinished(tried)
            if not _reached(last):
                stop = f"N={last['n']}: best {last['c_tokens']}/{last['n']}, reached at step {last['steps']}"
            else:
                stop = f"none up to N={last['n']}" + (" (search unfinished)" if searching else "")
            per_text.append([model, sm, recipe, tid, (">= " if searching else "") + str(best["n"] if best else 0),
                             f"{best['h_lm_nats']:.0f}" if best else "–", best["steps"] if best else "–", stop])
    p = paper["table3_capacity"]
    theirs = [[m, *p["C_tokens"]["pg19"][i]] for i, m in enumerate(p["models"])]
    _capacity_boxplot(data, labels, "Capacity per text, by recipe", figs / "capacity.png", success)
    return (f"## Capacity search by recipe\n\n{_scale_note(rows)} Each text is fitted up the length grid until its "
            f"first failure (accuracy < {success}); its capacity is the last length reached (0 if none)."
            + (" A text whose search is unfinished (no failure yet, and longer lengths on the grid not yet "
               "fitted) counts at its last length reached, a lower bound." if unfinished_any else "") + "\n\n"
            f"{_table(['model', 'source', 'share m', 'recipe', 'texts', 'mean', 'median', 'range', 'C_tokens at capacity', 'H_LM at capacity (nats)'], summary)}"
            f"\n\nPer text:\n\n"
            f"{_table(['model', 'share m', 'recipe', 'text', 'capacity', 'H_LM (nats)', 'steps at capacity', 'first failure'], per_text)}"
            f"\n\nPaper, PG-19 C_tokens (its recipe, 5000 steps):\n\n"
            f"{_table(['model', 'own m', 'shared m'], theirs)}\n\n![capacity](figures/capacity.png)\n")


def section_table4(rows: list[dict], paper: dict) -> str:
    by = defaultdict(list)
    for r in rows:
        by[(r["model"], r["recipe"], r["n"])].append(r["seconds"])
    body = [[m, rec, n, _ms(v), len(v)] for (m, rec, n), v in sorted(by.items())]
    p = paper["table4_training_seconds"]
    theirs = [[m] + ["–" if v is None else v for v in p[m]] for m in p if m not in ("setup", "columns_N")]
    return (f"## Table 4: fitting time per text\n\n{_scale_note(rows)}\n\nOurs (seconds per text):\n\n"
            f"{_table(['model', 'recipe', 'N', 'seconds', 'texts'], body)}\n\nPaper ({p['setup']}):\n\n"
            f"{_table(['model'] + [f'N={n}' for n in p['columns_N']], theirs)}\n")


def _memory_baseline(thr: dict, model: str, source: str) -> list[float] | None:
    """Throughputs of the 1-[mem] baseline for one model and source: its only recipe, else `kuratov`'s."""
    runs = {rec: v for (m, s, meth, rec), v in thr.items() if (m, s, meth) == (model, source, "memory-1")}
    return next(iter(runs.values())) if len(runs) == 1 else runs.get("kuratov")


def section_fig3_fig4(one_step: list[dict], memory: list[dict], figs: Path, paper: dict) -> str:
    groups = {**capacities([r for r in one_step if r["share_m"] == 1]), **capacities(memory)}
    body, fig_rows, thr = [], [], defaultdict(list)
    for (model, source, _, method, recipe), texts in sorted(groups.items()):
        reached = [r for r in texts.values() if r is not None]
        c = [r["n"] if r else 0 for r in texts.values()]
        h = [r["h_lm_nats"] for r in reached]
        body.append([model, source, method, recipe, f"{statistics.fmean(c):.1f}", _ms(h)])
        fig_rows.append((f"{method}\n{source}\n{recipe}", h))
        for r in reached:
            thr[(model, source, method, recipe)].append(r["n"] / r["extra"]["decode_seconds"])
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(fig_rows)), 4))
    ax.boxplot([h or [0] for _, h in fig_rows])
    ax.set_xticks(range(1, len(fig_rows) + 1), [lab for lab, _ in fig_rows], fontsize=7)
    ax.set_ylabel("H_LM at capacity (nats)")
    ax.set_title("Figure 3: one-step vs autoregressive [mem]")
    fig.tight_layout()
    fig.savefig(figs / "fig3.png", dpi=120)
    plt.close(fig)
    t_rows = []
    for (model, source, method, recipe), v in sorted(thr.items()):
        base = _memory_baseline(thr, model, source)
        ratio = f"{statistics.fmean(v) / statistics.fmean(base):.1f}x" if base and method == "one-step" else "–"
        t_rows.append([model, source, method, recipe, f"{statistics.fmean(v):,.0f}", ratio])
    ref = paper["autoregressive_baseline"]
    return (f"## Figure 3: one-step vs the autoregressive [mem] baseline\n\n{_scale_note(one_step + memory)}\n\n"
            f"{_table(['model', 'source', 'method', 'recipe', 'capacity (mean)', 'H_LM at capacity (nats)'], body)}\n\n"
            f"Paper: Kuratov et al.'s 1-[mem] PG-19 capacities: "
            f"{', '.join(f'{k} {v}' for k, v in ref['capacity_pg19_1mem'].items())}.\n\n![fig3](figures/fig3.png)\n\n"
            f"## Figure 4: reconstruction throughput\n\nThroughput = capacity length / time to reconstruct that text "
            f"(one forward pass, or greedy decoding with KV cache from [mem]), measured on the fitting device.\n\n"
            f"{_table(['model', 'source', 'method', 'recipe', 'tokens/s', 'one-step / memory-1'], t_rows)}\n\n"
            f"Paper: {paper['throughput']['claim']}.\n")


def _budget(run_dir: Path) -> int | None:
    """The step budget of the run in `run_dir`, from its config.json (None if unknown)."""
    path = run_dir / "config.json"
    fields = run_recipe_fields(json.loads(path.read_text())) if path.exists() else None
    return fields["max_steps"] if fields else None


def _in_flight_row(path: Path, root: Path) -> list:
    import torch

    where = path.relative_to(root).as_posix()
    try:
        snap = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged snapshot is reported, not fatal: the runs' results are intact
        return [where, f"unreadable ({type(e).__name__})", *["–"] * 5]
    about, run = snap.get("about") or {}, snap.get("run")
    fit = ", ".join(f"{k} {about[k]}" for k in ("model", "source", "arrangement", "share_m", "seed") if k in about)
    batches = f"{len(snap.get('done', {}))} finished"
    if run is None:
        return [where, fit or "–", "between batches", "–", f"{snap['seconds']:.0f}", "–", batches]
    correct = run["tensors"]["best_correct"]
    n = about.get("n", correct.shape[1])
    budget = about.get("max_steps", _budget(path.parent.parent))
    texts = about.get("texts", [])
    rows = ", ".join(texts) if len(texts) == correct.shape[0] else f"{correct.shape[0]} rows"
    best = ", ".join(str(int(c)) for c in correct.sum(1).tolist())
    return [where, fit or "–", f"{run['next_step']}" + (f" of {budget}" if budget else ""), rows,
            f"{snap['seconds']:.0f}", f"{best} of {n}", batches]


def section_in_flight(root: Path) -> str | None:
    """Fits in flight: each snapshot under `root` (a fit still running, or killed and not yet resumed),
    with the step it has reached and each row's best state so far (tokens right)."""
    snaps = sorted(root.glob("**/partial/*.pt"))
    if not snaps:
        return None
    body = [_in_flight_row(p, root) for p in snaps]
    return ("## Fits in flight\n\nFits not yet finished, as their last snapshot (`partial/`) left them: "
            "the step the fit goes on from, its fitting time so far, and each row's best state so far "
            "(tokens right). A row lands in results.sqlite only when its fit ends.\n\n"
            f"{_table(['snapshot', 'fit', 'step', 'rows', 'seconds', 'best correct', 'batches'], body)}\n")


def write_report(root: str | Path) -> Path:
    """Write RUN/report.md (and RUN/figures/*.png) from every run under `root`."""
    root = Path(root)
    runs = _runs(root)
    figs = root / "figures"
    figs.mkdir(exist_ok=True)
    paper = paper_tables()
    parts = ["# prototokens report\n", f"Generated from the runs under `{root}`. Paper: {paper['source']}\n"]
    if "table1" in runs:
        parts.append(section_table1(runs["table1"], figs, paper))
    for kind in ("e", "m"):
        if f"table2-{kind}" in runs:
            parts.append(section_table2(kind, runs[f"table2-{kind}"], paper))
    if "table3" in runs:
        parts.append(section_table3(runs["table3"], figs, paper))
    if "capacity" in runs:
        parts.append(section_capacity(runs["capacity"], figs, paper))
    if "table4" in runs:
        parts.append(section_table4(runs["table4"], paper))
    memory = runs.get("fig3-mem1", []) + runs.get("fig3-mem2", [])
    if memory:
        parts.append(section_fig3_fig4(runs.get("table3", []), memory, figs, paper))
    for geo in sorted(root.glob("**/geometry.json")):
        from .geometry import geometry_report_section

        rel = geo.parent.relative_to(root).as_posix()
        parts.append(geometry_report_section(geo.parent, figures="" if rel == "." else rel + "/"))
    known = {"table1", "table2-e", "table2-m", "table3", "capacity", "table4", "fig3-mem1", "fig3-mem2"}
    for name in sorted(set(runs) - known):
        rows = runs[name]
        parts.append(f"## Sweep {name}\n\n{_scale_note(rows)} Mean accuracy {_ms([r['accuracy'] for r in rows])}.\n")
    flight = section_in_flight(root)
    if flight:
        parts.append(flight)
    return write_atomic(root / "report.md", "\n".join(parts))
