"""Snapshots of a fit in progress, so that a fit killed mid-way resumes at the step it had reached.

A snapshot holds everything the fitting loop carries from one step to the next (the vectors, the
AdamW moments, the best state so far and the stop bookkeeping), so a resumed fit takes exactly the
steps the uninterrupted one would have taken. It is written atomically, at most every `every_s`
seconds, after a stop check; it is deleted once the fit has returned.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import time
from pathlib import Path

import torch

from .errors import PrototokensError
from .files import write_atomic

STALE = ("error", "discard")


def fit_identity(*parts) -> str:
    """A digest of everything that determines a fit's trajectory (JSON-serialisable parts)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


class Snapshots:
    """Where and how often a fit saves its state.

    stale: what to do with a snapshot at `path` that belongs to another fit (other texts, model,
    recipe or settings): "error" stops with a one-line error, "discard" starts the fit afresh.
    about: JSON-serialisable facts saved with each snapshot for people to read (a sweep saves the
    model, source, N, text ids and step budget, which `prototokens report` shows); not part of the
    fit's identity.
    """

    def __init__(self, path: str | Path, every_s: float = 300.0, stale: str = "error", about: dict | None = None):
        if stale not in STALE:
            raise PrototokensError(f"stale must be one of {', '.join(STALE)}, got {stale!r}")
        if every_s < 0:
            raise PrototokensError(f"the snapshot interval must be >= 0 seconds, got {every_s}")
        self.path, self.every_s, self.stale, self.about = Path(path), every_s, stale, about or {}
        self.identity: str | None = None
        self._last = time.monotonic()

    def open(self, identity: str) -> dict | None:
        """The saved state of the fit `identity`, or None if there is none to resume."""
        self.identity, self._last = identity, time.monotonic()
        if not self.path.exists():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # a damaged file: the fit is not lost, only its progress
            raise PrototokensError(f"{self.path} is not a readable snapshot ({type(e).__name__}); "
                                   "delete it to start the fit afresh") from None
        if state.get("identity") == identity:
            return state
        if self.stale == "error":
            raise PrototokensError(f"{self.path} is a snapshot of another fit (texts, model, recipe or settings "
                                   "differ); delete it or choose another path")
        print(f"note: {self.path} was a snapshot of another fit; starting afresh", file=sys.stderr)
        return None

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_s

    def save(self, state: dict) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({**state, "identity": self.identity, "about": self.about}, buf)
        write_atomic(self.path, buf.getvalue())
        self._last = time.monotonic()

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def loop_state(run, next_step: int) -> dict:
    """Everything a fitting loop (`engine._Run`, `baseline._MemRun`) carries to step `next_step`, as CPU
    copies: its tensor attributes named in `run._STATE`, its list attributes `run._LISTS`, and its
    parameters `run._PARAMS` with their optimiser state (AdamW: step, exp_avg, exp_avg_sq)."""
    out = {"next_step": next_step, "tensors": {n: getattr(run, n).detach().cpu().clone() for n in run._STATE}}
    for n in run._LISTS:
        out[n] = list(getattr(run, n))
    for n in run._PARAMS:
        p = getattr(run, n)
        out[n] = p.detach().cpu().clone()
        out[f"{n}_moments"] = {k: v.detach().cpu().clone() for k, v in run.opt.state.get(p, {}).items()}
    return out


def load_loop_state(run, state: dict, device: torch.device) -> int:
    """Put a `loop_state` back into `run`; return the step to continue from. The parameters are new
    objects holding their optimiser state (the step count stays on the CPU, where AdamW keeps it), and
    `run._optimised()` names those its optimiser updates."""
    for n, t in state["tensors"].items():
        setattr(run, n, t.to(device))
    for n in run._LISTS:
        setattr(run, n, list(state[n]))
    run.opt.state.clear()
    for n in run._PARAMS:
        p = torch.nn.Parameter(state[n].to(device))
        if state[f"{n}_moments"]:
            run.opt.state[p] = {k: v if k == "step" else v.to(device) for k, v in state[f"{n}_moments"].items()}
        setattr(run, n, p)
    run.opt.param_groups[0]["params"] = run._optimised()
    return int(state["next_step"])


class FitProgress:
    """One fit call's progress over its runs (the batches it fits one after another), kept in
    `snapshots` if given: which runs have finished and with what row results, the fit-level
    `vectors` (updated in place by the caller), the state of the run in flight, and the seconds spent.

    Without `snapshots` it only measures the seconds; every run starts afresh.
    """

    def __init__(self, snapshots: Snapshots | None, identity: str, vectors: dict[str, torch.Tensor],
                 fields: tuple[str, ...]):
        self.snapshots, self.vectors, self.fields = snapshots, vectors, fields
        self.start = time.perf_counter()
        saved = snapshots.open(identity) if snapshots is not None else None
        self.saved = saved or {"done": {}, "seconds": 0.0, "current": None, "run": None}
        if saved:
            for name, v in vectors.items():
                v[:] = saved[name]

    @property
    def seconds(self) -> float:
        """Fitting time over every attempt (earlier ones read from the snapshot)."""
        return self.saved["seconds"] + time.perf_counter() - self.start

    def finished(self, key: str, rows: list) -> bool:
        """Whether run `key` finished before the snapshot; if so its results are put back into `rows`."""
        results = self.saved["done"].get(key)
        if results is None:
            return False
        for row, res in zip(rows, results, strict=True):
            for k, v in res.items():
                setattr(row, k, v)
        return True

    def resume(self, key: str) -> dict | None:
        """The snapshot's state of run `key` if that run was in flight, else None."""
        return self.saved["run"] if self.saved["current"] == key else None

    def checked(self, key: str, run, next_step: int | None = None) -> None:
        """After a stop check of run `key` (next_step: where it goes on; None: it has finished): save if due."""
        if self.snapshots is not None and self.snapshots.due():
            self.snapshots.save({**self.vectors, "done": self.saved["done"], "current": key, "seconds": self.seconds,
                                 "run": loop_state(run, next_step) if next_step is not None else None})

    def done(self, key: str, rows: list, run) -> None:
        """Run `key` has finished with `rows` (its results) and the vectors are updated."""
        self.saved["done"][key] = [{k: getattr(r, k) for k in self.fields} for r in rows]
        self.checked(key, run)

    def close(self) -> None:
        """The fit has returned: its snapshot is no longer needed."""
        if self.snapshots is not None:
            self.snapshots.clear()
