"""A fit killed mid-way resumes from its snapshot and ends exactly where an uninterrupted fit ends."""

import pytest
import torch

import prototokens as pt
from prototokens.errors import PrototokensError
from prototokens.snapshots import Snapshots

from .conftest import TINY_RECIPE


class Killed(Exception):
    pass


def killed_after(monkeypatch, saves: int) -> list[int]:
    """Make the process 'die' right after its `saves`-th snapshot; returns the steps saved at."""
    at: list[int] = []
    save = Snapshots.save

    def dying_save(self, state):
        save(self, state)
        at.append(state["run"]["next_step"] if state["run"] else -1)
        if len(at) == saves:
            raise Killed

    monkeypatch.setattr(Snapshots, "save", dying_save)
    return at


def same_fit(a: pt.ProtoTokens, b: pt.ProtoTokens) -> None:
    assert torch.equal(a.e, b.e) and torch.equal(a.m, b.m)
    for x, y in zip(a.rows, b.rows, strict=True):
        assert (x.correct, x.steps, x.status, x.restarts, x.accuracy) == (y.correct, y.steps, y.status,
                                                                          y.restarts, y.accuracy)


@pytest.mark.parametrize("options", [
    {},  # constant rate, rows converging at different steps (the batch shrinks)
    {"share_m": 0, "recipe": TINY_RECIPE.replace(max_steps=60, plateau_after=3)},  # per-fit rate cuts
    {"recipe": TINY_RECIPE.replace(lr=1e-3, max_steps=40, restarts=2, restart_after=5)},  # restarts
    {"max_batch": 1},  # several runs, one after the other
    # low-rate phases at steps 11, 15, 19...: killed after step 14, it resumes at a phase start
    {"recipe": TINY_RECIPE.replace(max_steps=40, schedule="cosine", warmup_steps=2, decay_steps=11, phase_steps=4,
                                   phase_weight_decay=0.0)},
])
def test_a_killed_fit_resumes_to_the_same_result(llama, monkeypatch, tmp_path, options):
    texts = ["Hi", "Hello there", "A longer text to fit"]
    options = {"recipe": TINY_RECIPE.replace(max_steps=60), **options}
    whole = pt.fit(llama, texts, **options)
    path = tmp_path / "fit.pt"
    at = killed_after(monkeypatch, saves=15)
    with pytest.raises(Killed):
        pt.fit(llama, texts, snapshots=Snapshots(path, every_s=0), **options)
    assert path.exists() and at[-1] > 0  # killed in the middle of a run
    monkeypatch.undo()
    resumed = pt.fit(llama, texts, snapshots=Snapshots(path, every_s=0), **options)
    same_fit(whole, resumed)
    assert not path.exists()  # removed once the fit has returned


def test_the_snapshot_of_another_fit_is_refused_or_discarded(llama, monkeypatch, tmp_path):
    rec = TINY_RECIPE.replace(max_steps=30)
    path = tmp_path / "fit.pt"
    killed_after(monkeypatch, saves=2)
    with pytest.raises(Killed):
        pt.fit(llama, ["Hello there"], recipe=rec, snapshots=Snapshots(path, every_s=0))
    monkeypatch.undo()
    with pytest.raises(PrototokensError, match="snapshot of another fit"):
        pt.fit(llama, ["Other words"], recipe=rec, snapshots=Snapshots(path, every_s=0))
    assert path.exists()  # refused, not overwritten
    fresh = pt.fit(llama, ["Other words"], recipe=rec, snapshots=Snapshots(path, stale="discard"))
    same_fit(fresh, pt.fit(llama, ["Other words"], recipe=rec))


def test_a_warm_started_fit_resumes_from_its_own_snapshot_only(llama, monkeypatch, tmp_path):
    text, rec = ["Hello there"], TINY_RECIPE.replace(max_steps=30, stop_accuracy=2.0)
    start = pt.fit(llama, text, recipe=rec.replace(max_steps=4))
    path = tmp_path / "fit.pt"
    killed_after(monkeypatch, saves=3)
    with pytest.raises(Killed):
        pt.fit(llama, text, recipe=rec, snapshots=Snapshots(path, every_s=0))  # a cold start
    monkeypatch.undo()
    with pytest.raises(PrototokensError, match="snapshot of another fit"):
        pt.fit(llama, text, recipe=rec, init_from=start, snapshots=Snapshots(path, every_s=0))
    path.unlink()
    whole = pt.fit(llama, text, recipe=rec, init_from=start)
    killed_after(monkeypatch, saves=10)
    with pytest.raises(Killed):
        pt.fit(llama, text, recipe=rec, init_from=start, snapshots=Snapshots(path, every_s=0))
    monkeypatch.undo()
    same_fit(whole, pt.fit(llama, text, recipe=rec, init_from=start, snapshots=Snapshots(path, every_s=0)))


def test_a_damaged_snapshot_is_a_clear_error(llama, tmp_path):
    path = tmp_path / "fit.pt"
    path.write_bytes(b"not a snapshot")
    with pytest.raises(PrototokensError, match="not a readable snapshot"):
        pt.fit(llama, ["Hi"], recipe=TINY_RECIPE, snapshots=Snapshots(path))


def test_snapshots_wait_their_interval(llama, tmp_path, monkeypatch):
    at = killed_after(monkeypatch, saves=10**6)
    pt.fit(llama, ["Hello there"], recipe=TINY_RECIPE.replace(max_steps=20, stop_accuracy=2.0),
           snapshots=Snapshots(tmp_path / "fit.pt", every_s=3600))
    assert at == []


@pytest.mark.parametrize("max_batch", [None, 1])
def test_a_killed_memory_fit_resumes_to_the_same_result(llama, monkeypatch, tmp_path, max_batch):
    ids = [llama.encode(t) for t in ["Hi", "Hello there", "A longer text to fit"]]
    rec = pt.get_recipe("kuratov", max_steps=40)
    whole = pt.fit_memory(llama, ids, recipe=rec, max_batch=max_batch)
    path = tmp_path / "mem.pt"
    at = killed_after(monkeypatch, saves=15)
    with pytest.raises(Killed):
        pt.fit_memory(llama, ids, recipe=rec, max_batch=max_batch, snapshots=Snapshots(path, every_s=0))
    assert at[-1] > 0
    monkeypatch.undo()
    resumed = pt.fit_memory(llama, ids, recipe=rec, max_batch=max_batch, snapshots=Snapshots(path, every_s=0))
    assert torch.equal(whole.mem, resumed.mem)
    assert [(r.correct, r.steps, r.status) for r in whole.rows] == [(r.correct, r.steps, r.status) for r in resumed.rows]
    assert not path.exists()


def test_a_sweep_killed_mid_fit_resumes_that_fit_from_its_snapshot(tmp_path, monkeypatch):
    from prototokens.store import ResultStore
    from prototokens.sweep import Sweep

    from .test_sweep import tiny_config

    cfg = tiny_config(lengths=[8], arrangements=["e-m"], overrides={"lr": 0.1, "max_steps": 60})
    Sweep(cfg, tmp_path / "whole", snapshot_every=None).run(progress=False)
    run = tmp_path / "run"
    killed_after(monkeypatch, saves=20)
    with pytest.raises(Killed):
        Sweep(cfg, run, snapshot_every=0).run(progress=False)
    assert ResultStore(run).count() == 0 and len(list((run / "partial").glob("*.pt"))) == 1
    in_flight = flight_rows(run)
    assert [r[2] for r in in_flight] == ["20 of 60"]  # the step it goes on from, of the recipe's budget
    monkeypatch.undo()
    steps = []
    init = pt.engine._Run.load_state
    monkeypatch.setattr(pt.engine._Run, "load_state", lambda self, state: steps.append(init(self, state)) or steps[-1])
    assert Sweep(cfg, run, snapshot_every=0).run(progress=False)["rows_added"] == 3
    assert steps == [20]  # took up the killed fit at the step its last snapshot had reached
    assert list((run / "partial").glob("*.pt")) == []
    got, want = ResultStore(run).rows(), ResultStore(tmp_path / "whole").rows()
    assert [(r["text_id"], r["accuracy"], r["steps"], r["status"]) for r in got] == \
        [(r["text_id"], r["accuracy"], r["steps"], r["status"]) for r in want]
    a = pt.ProtoTokens.load(run / got[0]["fit_file"])
    b = pt.ProtoTokens.load(tmp_path / "whole" / want[0]["fit_file"])
    assert torch.equal(a.e, b.e) and torch.equal(a.m, b.m)
    # the report showed each text's best state at step 20: never more than the finished fit reached
    texts, best = in_flight[0][3].split(", "), in_flight[0][5].removesuffix(" of 8").split(", ")
    assert texts == [r["text_id"] for r in got]
    assert all(int(b) <= r["c_tokens"] for b, r in zip(best, got, strict=True))
    assert flight_rows(run) == []  # the fit ended: no snapshot, no section


def flight_rows(run) -> list[list[str]]:
    """The rows of the 'Fits in flight' table in `prototokens report RUN`."""
    from prototokens.report import write_report

    text = write_report(run).read_text()
    if "## Fits in flight" not in text:
        return []
    lines = [ln for ln in text.split("## Fits in flight")[1].splitlines() if ln.startswith("|")]
    return [[c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:]]  # after header and rule


def test_report_names_a_damaged_snapshot_and_goes_on(tmp_path):
    from prototokens.report import write_report
    from prototokens.store import ResultStore

    ResultStore(tmp_path).close()
    (tmp_path / "partial").mkdir()
    (tmp_path / "partial" / "abc.pt").write_bytes(b"not a snapshot")
    assert flight_rows(tmp_path)[0][:2] == ["partial/abc.pt", "unreadable (UnpicklingError)"]
    assert "# prototokens report" in write_report(tmp_path).read_text()
