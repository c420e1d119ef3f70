"""Sweeps: a declarative config expanded into fits, run resumably, optionally across ranks.

A config (TOML) names models, text sources, lengths, arrangements, sharing, seeds and a recipe.
It expands into *work units*, one fit call each: (model, source, N, arrangement, share_e,
share_m, seed) over a batch of texts. Sharing groups are therefore always groups of texts, as in
the paper's Table 2. Each finished unit commits its rows to the run's SQLite store.

With `capacity = true` the lengths are a search: a text is fitted at a length only if it
reached `success` accuracy (0.99) at every shorter one, so each text stops at its first failure.

Under `torchrun`, units are sharded by rank (unit i goes to rank i % world). Capacity searches
meet at a barrier after each length.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import PrototokensError
from .files import write_json
from .recipes import DEFAULT_RECIPE, RECIPES, get_recipe, same_recipe_as
from .store import Record, ResultStore

METHODS = ("one-step", "memory")


@dataclass(frozen=True)
class SweepConfig:
    """One sweep. Every list is a grid axis; `texts` is the number of texts per source."""

    name: str
    method: str = "one-step"
    models: tuple[str, ...] = ("smollm2-135m",)
    sources: tuple[str, ...] = ("gutenberg",)
    texts: int = 8
    text_seed: int = 0
    inline: tuple[str, ...] = ()  # texts given in the config itself (source "inline")
    lengths: tuple[int, ...] = (32,)
    arrangements: tuple[str, ...] = ("e-m",)
    seeds: tuple[int, ...] = (0,)
    share_e: tuple[int, ...] = (1,)
    share_m: tuple[int, ...] = (1,)
    recipe: str = DEFAULT_RECIPE
    overrides: dict = field(default_factory=dict)
    capacity: bool = False
    success: float = 0.99
    batch: int | None = None
    n_mem: int = 1
    mem_bos: bool | None = None  # memory method: BOS between [mem] and the text (default True); one-step: unused
    device: str = "auto"
    dtype: str = "auto"
    compile: bool = False

    @classmethod
    def from_dict(cls, d: dict) -> SweepConfig:
        known = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise PrototokensError(f"unknown sweep setting(s): {', '.join(unknown)}")
        if "name" not in d:
            raise PrototokensError("a sweep config needs a name")
        clean = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}
        return cls(**clean)

    def __post_init__(self) -> None:  # also runs on dataclasses.replace (command-line overrides)
        from .data import SOURCES
        from .loading import check_model_name

        if self.method not in METHODS:
            raise PrototokensError(f"unknown method {self.method!r}; known: {', '.join(METHODS)}")
        if self.method == "memory" and self.mem_bos is None:
            object.__setattr__(self, "mem_bos", True)
        elif self.method != "memory" and self.mem_bos is not None:
            raise PrototokensError("mem_bos applies to method = \"memory\" only")
        if any(n < 1 for n in self.lengths):
            raise PrototokensError("lengths must be >= 1")
        bad = [s for s in self.sources if s not in (*SOURCES, "inline")]
        if bad:
            raise PrototokensError(f"unknown text source(s) {', '.join(map(repr, bad))}; "
                                   f"known: {', '.join(SOURCES)}, inline")
        for model in self.models:
            check_model_name(model)

    @classmethod
    def from_toml(cls, path: str | Path, **changes) -> SweepConfig:
        path = Path(path)
        if not path.is_file():
            raise PrototokensError(f"no such config file: {path}")
        try:
            data = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as e:
            raise PrototokensError(f"{path} is not valid TOML ({e})") from None
        data.update({k: v for k, v in changes.items() if v is not None})
        return cls.from_dict(data)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    def recipe_obj(self):
        return get_recipe(self.recipe, **self.overrides)


@dataclass(frozen=True)
class Unit:
    """One fit call: a batch of texts fitted together under one setting."""

    model: str
    source: str
    n: int
    arrangement: str
    share_e: int
    share_m: int
    seed: int
    text_ids: tuple[str, ...]

    def key(self, cfg: SweepConfig, token_ids: list[list[int]] | None = None) -> str:
        """The unit's identity; with `token_ids`, a change in the texts' content also changes it."""
        return _digest([cfg.name, cfg.method, cfg.n_mem, self.model, self.source, self.n, self.arrangement,
                        self.share_e, self.share_m, self.seed, cfg.recipe_obj().to_dict(), list(self.text_ids)]
                       + _bos_mark(cfg) + ([token_ids] if token_ids is not None else []))

    def row_key(self, cfg: SweepConfig, text_id: str) -> str:
        return _digest([cfg.name, cfg.method, cfg.n_mem, self.model, self.source, self.n, self.arrangement,
                        self.share_e, self.share_m, self.seed, cfg.recipe_obj().to_dict(), text_id] + _bos_mark(cfg))


def _bos_mark(cfg: SweepConfig) -> list:
    # keys made before mem_bos existed (no BOS) stay as they were
    return [["mem_bos", True]] if cfg.mem_bos else []


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:24]


def _texts(cfg: SweepConfig, source: str, n: int) -> list[tuple[str, str]]:
    """(text id, text) pairs of a source, in a fixed order (random texts are drawn per length N)."""
    if source == "inline":
        if not cfg.inline:
            raise PrototokensError("source 'inline' needs an `inline` list of texts in the config")
        return [(f"inline-{i}", t) for i, t in enumerate(cfg.inline)]
    from .data import load_texts

    extra = {"n_tokens": n} if source == "random" else {}
    return [(t.id, t.text) for t in load_texts(source, cfg.texts, seed=cfg.text_seed, **extra)]


def _batches(items: list, size: int | None, multiple: int) -> list[list]:
    """Split into batches of at most `size`, each a whole number of sharing groups."""
    if size is None or size >= len(items):
        return [items]
    size = max(multiple, size - size % multiple)
    return [items[i:i + size] for i in range(0, len(items), size)]


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def _barrier() -> None:
    if _dist()[1] > 1:
        torch.distributed.barrier()


class Sweep:
    """Runs a SweepConfig into a run directory; safe to rerun, kill and resume.

    snapshot_every: seconds between snapshots of the fit in flight (in `partial/` of the run
    directory), so that a killed sweep resumes that fit at the step it had reached; None: no
    snapshots (a killed fit starts again). Fits whose m spans ranks are not snapshotted.
    """

    def __init__(self, cfg: SweepConfig, run_dir: str | Path, snapshot_every: float | None = 300.0):
        self.cfg, self.snapshot_every = cfg, snapshot_every
        if _dist()[0] == 0:  # rank 0 creates the database and writes the config; the others then open them
            self.store = ResultStore(run_dir)
            self._check_config(Path(run_dir) / "config.json")
        _barrier()
        if _dist()[0] != 0:
            self.store = ResultStore(run_dir)
            self._check_config(Path(run_dir) / "config.json")

    def _check_config(self, path: Path) -> None:
        # config.json also records the recipe's fields, so that a named recipe redefined later
        # cannot silently add fits of another recipe to a run started under the old definition
        mine = json.loads(json.dumps(self.cfg.to_dict()))
        if path.exists():
            saved = json.loads(path.read_text())
            settings = {k: v for k, v in saved.items() if k != "recipe_fields"}
            if {**_legacy_settings(saved), **settings} != mine:
                raise PrototokensError(f"{path.parent} holds results of a different sweep config; use another run dir")
            redefined, now = recipe_redefined(saved)
            if redefined:
                raise PrototokensError(
                    f"{path.parent} was run with recipe {self.cfg.recipe!r} as it was defined then"
                    + (f" (now named {now!r})" if now else "") + ", which has changed since; use another run dir "
                    "(its results stay readable by `prototokens report`)")
        elif _dist()[0] == 0:
            write_json(path, {**mine, "recipe_fields": self.cfg.recipe_obj().to_dict()}, sort_keys=True)

    def run(self, progress: bool = True) -> dict:
        """Fit every unit not yet in the store (this rank's share); return counts."""
        from .loading import load_model

        rank, world = _dist()
        cfg, done = self.cfg, self.store.done_units()
        counts = {"units_run": 0, "units_skipped": 0, "rows_added": 0}
        for model_name in cfg.models:
            lm = load_model(model_name, device=cfg.device, dtype=cfg.dtype)
            for source in cfg.sources:
                alive = None
                for n in sorted(cfg.lengths):
                    units = self._units(model_name, source, n, alive, lm)
                    for i, (unit, payload) in enumerate(units):
                        if world > 1 and self._spans_ranks(unit):
                            added = self._shared_unit(lm, unit, payload, rank, world, progress)
                            counts["units_run" if added else "units_skipped"] += 1
                            counts["rows_added"] += added
                            continue
                        if i % world != rank:
                            continue
                        key = unit.key(cfg, [ids for _, ids in payload])
                        if key in done:
                            counts["units_skipped"] += 1
                            continue
                        counts["rows_added"] += self._fit_unit(lm, unit, key, payload, progress)
                        counts["units_run"] += 1
                    if cfg.capacity:
                        _barrier()
                        alive = self._survivors(model_name, source, n, alive)
        return counts

    def _units(self, model: str, source: str, n: int, alive: set | None, lm):
        """Work units at length n, each with its payload of (text id, token ids) pairs."""
        from .data import generated_texts, prefix_tokens

        cfg = self.cfg
        if source == "generated":  # sampled by the model itself, at exactly n tokens
            gen = generated_texts(lm, n, cfg.texts, seed=cfg.text_seed)
            items = [(f"gen-{i}", ids) for i, (ids, _) in enumerate(gen)]
        else:
            items = [(tid, prefix_tokens(lm, text, n)) for tid, text in _texts(cfg, source, n)]
        out = []
        for arr in cfg.arrangements:
            for se in cfg.share_e:
                for sm in cfg.share_m:
                    multiple = max(se, sm, 1)
                    mine = items if alive is None else [it for it in items if it[0] in alive.get(self._setting(arr, se, sm), ())]
                    for seed in cfg.seeds:  # a capacity search whose texts have all stopped has no batches
                        for batch in _batches(mine, cfg.batch, multiple) if mine else []:
                            unit = Unit(model, source, n, arr, se, sm, seed, tuple(t for t, _ in batch))
                            out.append((unit, batch))
        return out

    def _spans_ranks(self, unit: Unit) -> bool:
        """One m shared by all texts (own e): the unit's texts are split over the ranks."""
        return self.cfg.method == "one-step" and unit.share_m == 0 and unit.share_e == 1

    def _shared_unit(self, lm, unit: Unit, payload: list, rank: int, world: int, progress: bool) -> int:
        """Fit this rank's share of a unit whose m is shared across ranks (every rank takes part); rows added."""
        key = unit.key(self.cfg, [ids for _, ids in payload])
        parts = [f"{key}-r{r}of{world}" for r in range(world)]
        _barrier()  # every rank has committed its earlier parts: all see the same done set
        if set(parts) <= self.store.done_units():
            return 0
        mine = payload[rank::world]
        if not mine:
            raise PrototokensError(f"{world} ranks but only {len(payload)} texts share one m: use fewer ranks")
        return self._fit_unit(lm, unit, parts[rank], mine, progress, distributed=True)

    def _setting(self, arrangement: str, share_e: int, share_m: int) -> tuple:
        """A capacity search's identity within a source (memory fits are stored with arrangement 'mem')."""
        return ("mem" if self.cfg.method != "one-step" else arrangement, share_e, share_m)

    def _survivors(self, model: str, source: str, n: int, alive: dict | None) -> dict[tuple, set[str]]:
        """Per setting (arrangement, share_e, share_m): the texts still searched after length n.

        A text goes on if it was searched at n and one of its seeds reached the success accuracy;
        each setting is searched on its own, so failing with a shared m does not end the own-m search.
        """
        rows = self.store.rows("model = ? AND source = ? AND n = ?", (model, source, n))
        out: dict[tuple, set[str]] = {}
        for r in rows:
            setting = self._setting(r["arrangement"], r["share_e"], r["share_m"])
            searched = alive is None or r["text_id"] in alive.get(setting, ())
            if searched and r["accuracy"] >= self.cfg.success:
                out.setdefault(setting, set()).add(r["text_id"])
        return out

    def _fit_unit(self, lm, unit: Unit, key: str, payload: list[tuple[str, list[int]]], progress: bool,
                  distributed: bool = False) -> int:
        from .metrics import lm_cross_entropy
        from .snapshots import Snapshots

        cfg = self.cfg
        ids = [t for _, t in payload]
        snaps = None
        if self.snapshot_every is not None and not distributed:
            about = {"method": cfg.method, "model": unit.model, "source": unit.source, "n": unit.n,
                     "arrangement": unit.arrangement if cfg.method == "one-step" else "mem",
                     "share_m": unit.share_m, "seed": unit.seed, "texts": [tid for tid, _ in payload],
                     "max_steps": cfg.recipe_obj().max_steps}
            snaps = Snapshots(self.store.dir / "partial" / f"{key}.pt", self.snapshot_every, stale="discard",
                              about=about)
        if cfg.method == "one-step":
            from .engine import fit_token_ids

            fit = fit_token_ids(lm, ids, seeds=[unit.seed], arrangement=unit.arrangement, recipe=cfg.recipe_obj(),
                                share_e=unit.share_e, share_m=unit.share_m, progress=progress,
                                compile=cfg.compile, distributed=distributed, snapshots=snaps)
        else:
            from .baseline import fit_memory

            fit = fit_memory(lm, ids, n_mem=cfg.n_mem, seeds=[unit.seed], recipe=cfg.recipe_obj(), progress=progress,
                             bos=cfg.mem_bos, snapshots=snaps)
        seconds = fit.seconds  # over every attempt, when the fit resumed from a snapshot
        decode_s = _decode_seconds(lm, fit)
        rel = f"fits/{key}.safetensors"
        fit.save(self.store.dir / rel)
        h = lm_cross_entropy(lm, ids)
        records = []
        for (tid, _), row, h_lm in zip(payload, fit.rows, h, strict=True):
            records.append(Record(
                key=unit.row_key(cfg, tid), unit=key, experiment=cfg.name, method=cfg.method
                if cfg.method == "one-step" else f"memory-{cfg.n_mem}", model=unit.model, source=unit.source,
                text_id=tid, n=unit.n, arrangement=unit.arrangement if cfg.method == "one-step" else "mem",
                share_e=unit.share_e, share_m=unit.share_m, seed=unit.seed, recipe=cfg.recipe,
                accuracy=row.accuracy, c_tokens=getattr(row, "c_tokens", round(row.accuracy * row.n_tokens)),
                steps=row.steps, status=row.status, h_lm_nats=h_lm, seconds=seconds / len(payload), fit_file=rel,
                extra={"unit_seconds": seconds, "unit_rows": len(payload), "device": str(lm.device),
                       "decode_seconds": decode_s, **({"bos": cfg.mem_bos} if cfg.method == "memory" else {})},
            ))
        self.store.add(records)
        return len(records)


def run_recipe_fields(saved: dict) -> dict | None:
    """The fields of the recipe that a run ran under, from its config.json. Runs written before the
    fields were recorded (2026-11-24) are known by name; `recommended` then meant what
    `recommended-constant` means now. None where unknown (a recipe name no longer defined)."""
    if "recipe_fields" in saved:
        return saved["recipe_fields"]
    name = saved.get("recipe", DEFAULT_RECIPE)
    then = "recommended-constant" if name == "recommended" else name
    if then not in RECIPES:
        return None
    return get_recipe(then, **saved.get("overrides", {})).replace(name=name).to_dict()


def recipe_redefined(saved: dict) -> tuple[bool, str | None]:
    """Whether the recipe named in a run's config.json has been redefined since the run began, and
    if so the name, if any, under which its recipe is defined now."""
    fields = run_recipe_fields(saved)
    name, overrides = saved.get("recipe", DEFAULT_RECIPE), saved.get("overrides", {})
    if fields is None or (name in RECIPES and get_recipe(name, **overrides).to_dict() == fields):
        return False, None
    return True, same_recipe_as(fields, overrides)


def _legacy_settings(saved: dict) -> dict:
    """What a config.json written before a setting existed meant by leaving it out."""
    return {"mem_bos": False if saved.get("method") == "memory" else None}


def _sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _decode_seconds(lm, fit) -> float:
    """Wall time to reconstruct one text of the unit: one forward pass, or greedy decoding from [mem]."""
    row = fit.rows[0]
    if hasattr(fit, "mem"):
        from .baseline import greedy_decode

        run = lambda: greedy_decode(lm, fit.mem[0], row.n_tokens, fit.bos_id)  # noqa: E731
    else:
        from .decoding import decode_ids

        e, m = fit.vectors(0)
        run = lambda: decode_ids(lm, e, m, row.n_tokens, fit.arrangement)  # noqa: E731
    run()  # warm-up
    _sync(lm.device)
    start = time.perf_counter()
    for _ in range(3):
        run()
    _sync(lm.device)
    return (time.perf_counter() - start) / 3


def init_distributed() -> None:
    """Join the torchrun process group if launched by torchrun (gloo on CPU, nccl on GPU)."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
