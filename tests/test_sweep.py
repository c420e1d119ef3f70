"""Sweeps: expansion, SQLite store, resume (also after kill -9), capacity search, ranks, report."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time

import pytest
import torch

from prototokens import experiments
from prototokens.data import load_texts
from prototokens.errors import PrototokensError
from prototokens.store import ResultStore
from prototokens.sweep import Sweep, SweepConfig

TEXTS = ["Hello there, friend.", "A quiet morning walk.", "Numbers: 1, 2, 3, 4!"]


def tiny_config(**changes) -> SweepConfig:
    base = dict(name="t", models=["tiny-random-llama"], sources=["inline"], inline=TEXTS, lengths=[4, 8],
                arrangements=["e-m", "e-m-plus"], recipe="paper", overrides={"lr": 0.1, "max_steps": 200},
                device="cpu", dtype="fp32")
    base.update(changes)
    return SweepConfig.from_dict(base)


def forget_setting(run, key: str) -> None:
    """Make a run dir's config.json look as if written before the setting `key` existed."""
    saved = json.loads((run / "config.json").read_text())
    del saved[key]
    (run / "config.json").write_text(json.dumps(saved))


def test_sweep_runs_every_row_once_and_resumes(tmp_path):
    cfg = tiny_config()
    first = Sweep(cfg, tmp_path).run(progress=False)
    assert first == {"units_run": 4, "units_skipped": 0, "rows_added": 12}
    store = ResultStore(tmp_path)
    rows = store.rows()
    assert len(rows) == 12 and len({r["key"] for r in rows}) == 12
    assert {(r["n"], r["arrangement"]) for r in rows} == {(4, "e-m"), (8, "e-m"), (4, "e-m-plus"), (8, "e-m-plus")}
    assert all((tmp_path / r["fit_file"]).exists() for r in rows)
    assert all(r["h_lm_nats"] > 0 and r["extra"]["decode_seconds"] > 0 for r in rows)
    again = Sweep(cfg, tmp_path).run(progress=False)
    assert again == {"units_run": 0, "units_skipped": 4, "rows_added": 0}
    assert store.count() == 12


def test_a_run_dir_refuses_another_config(tmp_path):
    Sweep(tiny_config(lengths=[4], arrangements=["e-m"]), tmp_path).run(progress=False)
    with pytest.raises(PrototokensError, match="different sweep config"):
        Sweep(tiny_config(lengths=[5], arrangements=["e-m"]), tmp_path)


def test_a_run_dir_refuses_a_recipe_redefined_since(tmp_path):
    cfg = tiny_config(lengths=[4], arrangements=["e-m"])
    Sweep(cfg, tmp_path).run(progress=False)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["recipe_fields"] == cfg.recipe_obj().to_dict() and saved["recipe_fields"]["lr"] == 0.1
    Sweep(cfg, tmp_path)  # unchanged: accepted
    saved["recipe_fields"]["focal_gamma"] = 2.0  # as if `paper` had meant this when the run began
    (tmp_path / "config.json").write_text(json.dumps(saved))
    with pytest.raises(PrototokensError, match="'paper' as it was defined then"):
        Sweep(cfg, tmp_path)
    assert ResultStore(tmp_path).count() == 3


def test_runs_from_before_recipe_fields_were_recorded(tmp_path):
    from prototokens.report import _runs

    paper = tiny_config(lengths=[4], arrangements=["e-m"])
    Sweep(paper, tmp_path / "p"), forget_setting(tmp_path / "p", "recipe_fields")
    Sweep(paper, tmp_path / "p")  # `paper` has not changed: accepted
    # `recommended` then meant what `recommended-constant` means now: refused, and reported under that name
    rec = tiny_config(lengths=[4], arrangements=["e-m"], recipe="recommended", overrides={"max_steps": 2})
    Sweep(rec, tmp_path / "r").run(progress=False)
    assert {r["recipe"] for r in _runs(tmp_path / "r")["t"]} == {"recommended"}
    forget_setting(tmp_path / "r", "recipe_fields")
    with pytest.raises(PrototokensError, match="now named 'recommended-constant'"):
        Sweep(rec, tmp_path / "r")
    assert {r["recipe"] for r in _runs(tmp_path / "r")["t"]} == {"recommended-constant"}
    assert ResultStore(tmp_path / "r").count() == 3


def test_capacity_search_stops_each_text_at_its_first_failure(tmp_path):
    cfg = tiny_config(lengths=[2, 4, 19], arrangements=["e-m"], capacity=True, overrides={"lr": 0.1, "max_steps": 20})
    Sweep(cfg, tmp_path).run(progress=False)
    rows = ResultStore(tmp_path).rows()
    by_text = {}
    for r in rows:
        by_text.setdefault(r["text_id"], []).append((r["n"], r["accuracy"]))
    for fits in by_text.values():
        fits.sort()
        ns = [n for n, _ in fits]
        assert ns == [2, 4, 19][:len(ns)]  # a prefix of the grid
        assert all(acc >= 0.99 for _, acc in fits[:-1])  # only the last one may fail
        if len(ns) < 3:
            assert fits[-1][1] < 0.99
    assert any(len(f) < 3 for f in by_text.values())  # 20 steps fit 2 tokens, not 19 (measured)


def test_capacity_search_runs_each_sharing_setting_on_its_own(tmp_path):
    # a text that fails with one m shared by all texts goes on with its own m: same fits as an own-m-only sweep
    over = {"lr": 0.1, "max_steps": 60}
    both = tiny_config(lengths=[2, 4, 8, 19], arrangements=["e-m"], share_m=[1, 3], capacity=True, overrides=over)
    alone = tiny_config(lengths=[2, 4, 8, 19], arrangements=["e-m"], capacity=True, overrides=over)
    Sweep(both, tmp_path / "both").run(progress=False)
    Sweep(alone, tmp_path / "alone").run(progress=False)
    rows = ResultStore(tmp_path / "both").rows()
    own = sorted((r["text_id"], r["n"], r["accuracy"]) for r in rows if r["share_m"] == 1)
    assert own == sorted((r["text_id"], r["n"], r["accuracy"]) for r in ResultStore(tmp_path / "alone").rows())
    reach = {(r["text_id"], r["share_m"]): r["n"] for r in sorted(rows, key=lambda r: r["n"])}
    # measured: some text failed at 8 with the shared m and went on to 19 with its own
    assert any(reach[t, 1] > reach[t, 3] for t, _ in reach), reach


@pytest.mark.parametrize("bad,message", [
    ({"colour": "red"}, "unknown sweep setting"),
    ({"method": "magic"}, "unknown method"),
    ({"lengths": [0]}, "lengths must be"),
])
def test_bad_configs(bad, message):
    with pytest.raises(PrototokensError, match=message):
        tiny_config(**bad)


def test_an_unknown_recipe_override_is_a_clear_error(tmp_path):
    with pytest.raises(PrototokensError, match="unknown recipe field.*bogus"):
        Sweep(tiny_config(overrides={"bogus": 1}), tmp_path / "run").run(progress=False)


def test_toml_errors(tmp_path):
    with pytest.raises(PrototokensError, match="no such config"):
        SweepConfig.from_toml(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed")
    with pytest.raises(PrototokensError, match="not valid TOML"):
        SweepConfig.from_toml(bad)


def test_registered_experiments_load_at_both_scales():
    for name in experiments.names():
        full, cpu = experiments.load(name), experiments.load(name, "cpu")
        assert cpu.name == full.name + "-cpu"
    assert experiments.load("table3").capacity and experiments.load("fig3-mem1").method == "memory"
    with pytest.raises(PrototokensError, match="unknown experiment"):
        experiments.load("table99")


CONFIG = """
name = "killme"
models = ["tiny-random-llama"]
sources = ["inline"]
inline = {texts}
lengths = [4, 5, 6, 7, 8, 9, 10, 11]
arrangements = ["e-m"]
recipe = "paper"
overrides = {{ lr = 0.1, max_steps = 150 }}
device = "cpu"
dtype = "fp32"
"""


def test_kill_minus_9_loses_nothing_committed(tmp_path):
    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(CONFIG.format(texts=repr(TEXTS).replace("'", '"')))
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "prototokens.cli", "sweep", str(cfg_file), "--run", str(run), "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    db = run / "results.sqlite"
    deadline = time.time() + 120
    while time.time() < deadline:  # wait for the first committed unit, then kill mid-sweep
        if db.exists():
            try:
                if sqlite3.connect(db, timeout=5).execute("SELECT COUNT(*) FROM results").fetchone()[0] > 0:
                    break
            except sqlite3.OperationalError:
                pass
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    partial = ResultStore(run).count()
    assert 0 < partial < 24
    assert subprocess.run(cmd, capture_output=True).returncode == 0
    store = ResultStore(run)
    assert store.count() == 24
    assert store.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len({r["key"] for r in store.rows()}) == 24


def test_results_file_alone_holds_every_committed_row(tmp_path):
    # a run killed mid-sweep leaves its WAL behind; a copy of results.sqlite alone must still have the rows
    import shutil

    from prototokens.store import Record

    store = ResultStore(tmp_path / "run")
    store.add([Record(key=f"k{i}", unit="u", experiment="x", method="one-step", model="m", source="s",
                      text_id=f"t{i}", n=4, arrangement="e-m", share_e=1, share_m=1, seed=0, recipe="r",
                      accuracy=1.0, c_tokens=4, steps=3, status="converged", h_lm_nats=None, seconds=0.1,
                      fit_file="f") for i in range(3)])
    (tmp_path / "copy").mkdir()
    shutil.copy(store.path, tmp_path / "copy" / "results.sqlite")  # the connection is still open, as in a kill
    assert ResultStore(tmp_path / "copy").count() == 3


# a fixed number of steps (no early stop): trajectories are compared, not just outcomes
SHARED = dict(share_m=[1, 0], inline=TEXTS + ["One more text here."], lengths=[6], arrangements=["e-m"],
              overrides={"lr": 0.1, "max_steps": 12, "stop_accuracy": 2.0})


def _rank(rank: int, world: int, port: int, run_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    from prototokens.sweep import init_distributed

    init_distributed()
    Sweep(tiny_config(**SHARED), run_dir).run(progress=False)
    torch.distributed.destroy_process_group()


def test_two_ranks_give_the_same_rows_and_results_as_one(tmp_path):
    # units are sharded by rank; the unit whose m is shared by all 4 texts is split over both
    # ranks, with m's gradient all-reduced
    Sweep(tiny_config(**SHARED), tmp_path / "one").run(progress=False)
    script = textwrap.dedent(f"""
        import sys, torch.multiprocessing as mp
        sys.path.insert(0, {str(os.path.dirname(__file__) + '/..')!r})
        from tests.test_sweep import _rank
        if __name__ == "__main__":
            mp.spawn(_rank, args=(2, 29517, {str(tmp_path / 'two')!r}), nprocs=2)
    """)
    assert subprocess.run([sys.executable, "-c", script], timeout=600).returncode == 0
    one = {r["key"]: r for r in ResultStore(tmp_path / "one").rows()}
    two = {r["key"]: r for r in ResultStore(tmp_path / "two").rows()}
    assert one.keys() == two.keys() and len(one) == 8
    for k in one:
        assert (one[k]["accuracy"], one[k]["status"]) == (two[k]["accuracy"], two[k]["status"])
        assert one[k]["steps"] == two[k]["steps"] or one[k]["share_m"] == 0  # shared: float-level sums may reorder
    # the shared m is the same vector on both ranks and in the single process
    from prototokens.artefacts import ProtoTokens

    shared = [r for r in two.values() if r["share_m"] == 0]
    assert len({r["unit"] for r in shared}) == 2  # one part per rank
    ms = [ProtoTokens.load(tmp_path / "two" / f).m for f in sorted({r["fit_file"] for r in shared})]
    m_one = ProtoTokens.load(tmp_path / "one" / next(r["fit_file"] for r in one.values() if r["share_m"] == 0)).m
    assert torch.equal(ms[0], ms[1])
    assert torch.allclose(ms[0], m_one, atol=1e-4), (ms[0] - m_one).abs().max()


def test_report_renders_the_paper_sections(tmp_path):
    Sweep(tiny_config(name="table1-cpu", lengths=[2, 4]), tmp_path / "table1").run(progress=False)
    Sweep(tiny_config(name="table3-cpu", lengths=[2, 4], arrangements=["e-m"], capacity=True),
          tmp_path / "table3").run(progress=False)
    Sweep(tiny_config(name="table2-m-cpu", lengths=[4], arrangements=["e-m"], share_m=[1, 3], seeds=[0, 1]),
          tmp_path / "table2m").run(progress=False)
    from prototokens.report import write_report

    out = write_report(tmp_path)
    text = out.read_text()
    for heading in ("## Table 1", "## Table 2: shared m", "## Table 3", "scaled-down CPU run", "Paper ("):
        assert heading in text
    assert (tmp_path / "figures" / "table1.png").stat().st_size > 1000
    assert (tmp_path / "figures" / "table3.png").stat().st_size > 1000


def test_report_on_an_empty_dir_is_a_clear_error(tmp_path):
    from prototokens.report import write_report

    with pytest.raises(PrototokensError, match="no results.sqlite"):
        write_report(tmp_path)


def test_memory_baseline_sweep_and_figures_3_and_4(tmp_path):
    Sweep(tiny_config(name="table3-cpu", lengths=[2, 4], arrangements=["e-m"], capacity=True),
          tmp_path / "table3").run(progress=False)
    Sweep(tiny_config(name="fig3-mem1-cpu", method="memory", n_mem=1, lengths=[2, 4], capacity=True),
          tmp_path / "fig3").run(progress=False)
    rows = ResultStore(tmp_path / "fig3").rows()
    assert rows and {r["method"] for r in rows} == {"memory-1"} and {r["arrangement"] for r in rows} == {"mem"}
    assert all(r["extra"]["decode_seconds"] > 0 and r["extra"]["bos"] is True for r in rows)
    from prototokens.report import write_report

    text = write_report(tmp_path).read_text()
    assert "## Figure 3" in text and "## Figure 4" in text and "| memory-1 |" in text
    assert (tmp_path / "figures" / "fig3.png").exists()
    # a no-BOS baseline run is kept apart from the BOS one
    Sweep(tiny_config(name="fig3-mem1-cpu", method="memory", n_mem=1, lengths=[2], mem_bos=False),
          tmp_path / "fig3-nobos").run(progress=False)
    text = write_report(tmp_path).read_text()
    assert "| memory-1 |" in text and "| memory-1-nobos |" in text


def test_run_dirs_written_before_mem_bos_existed(tmp_path):
    one_step = tiny_config(lengths=[4], arrangements=["e-m"])
    assert one_step.mem_bos is None
    Sweep(one_step, tmp_path / "one"), forget_setting(tmp_path / "one", "mem_bos")
    Sweep(one_step, tmp_path / "one")  # nothing changed for one-step runs: accepted
    memory = tiny_config(name="m", method="memory", lengths=[4], arrangements=["e-m"])
    assert memory.mem_bos is True
    Sweep(memory, tmp_path / "mem"), forget_setting(tmp_path / "mem", "mem_bos")
    with pytest.raises(PrototokensError, match="different sweep config"):  # an old run had no BOS
        Sweep(memory, tmp_path / "mem")
    Sweep(tiny_config(name="m", method="memory", lengths=[4], arrangements=["e-m"], mem_bos=False), tmp_path / "mem")
    with pytest.raises(PrototokensError, match="mem_bos applies to"):
        tiny_config(mem_bos=True)


def test_capacity_search_ends_quietly_when_every_text_has_failed(tmp_path):
    # 1 step cannot fit 8 tokens: every text fails at the first length and nothing more is fitted
    cfg = tiny_config(lengths=[8, 9, 10], arrangements=["e-m"], capacity=True, overrides={"lr": 0.1, "max_steps": 1})
    counts = Sweep(cfg, tmp_path).run(progress=False)
    rows = ResultStore(tmp_path).rows()
    assert {r["n"] for r in rows} == {8} and all(r["accuracy"] < 0.99 for r in rows)
    assert counts["units_run"] == 1


def test_unit_key_follows_text_content():
    from prototokens.sweep import Unit

    cfg = tiny_config()
    unit = Unit("tiny-random-llama", "gutenberg", 4, "e-m", 1, 1, 0, ("text-0",))
    assert unit.key(cfg, [[1, 2, 3, 4]]) == unit.key(cfg, [[1, 2, 3, 4]])
    assert unit.key(cfg, [[1, 2, 3, 4]]) != unit.key(cfg, [[1, 2, 3, 5]])  # same id, new content: a new unit


def test_sweep_command_overrides_recipe_and_steps(tmp_path, capsys):
    from prototokens.cli import main

    cfg_file = tmp_path / "c.toml"
    cfg_file.write_text(CONFIG.format(texts=repr(TEXTS[:1]).replace("'", '"')).replace(
        "lengths = [4, 5, 6, 7, 8, 9, 10, 11]", "lengths = [4]"))
    assert main(["sweep", str(cfg_file), "--run", str(tmp_path / "a"), "--recipe", "large-init", "--steps", "3",
                 "--quiet"]) == 0
    (row,) = ResultStore(tmp_path / "a").rows()
    assert row["recipe"] == "large-init" and row["steps"] <= 3
    saved = (tmp_path / "a" / "config.json").read_text()
    assert '"recipe": "large-init"' in saved and '"max_steps": 3' in saved and '"lr": 0.1' in saved
    # the same run dir with the config's own recipe is another sweep: refused, nothing lost
    assert main(["sweep", str(cfg_file), "--run", str(tmp_path / "a"), "--quiet"]) == 2
    assert "different sweep config" in capsys.readouterr().err
    assert ResultStore(tmp_path / "a").count() == 1
    with pytest.raises(SystemExit):  # argparse: one usage line, exit 2
        main(["experiment", "capacity", "--recipe", "nope"])


def test_experiment_command_overrides_models_and_sources(tmp_path, capsys):
    from prototokens.cli import main

    run = tmp_path / "t1"
    assert main(["experiment", "table1", "--scale", "cpu", "--models", "tiny-random-qwen2", "--sources", "unseen",
                 "--steps", "2", "--run", str(run), "--quiet"]) == 0
    rows = ResultStore(run).rows()
    assert rows and {(r["model"], r["source"]) for r in rows} == {("tiny-random-qwen2", "unseen")}
    shared = tmp_path / "t1-shared"
    assert main(["experiment", "table1", "--scale", "cpu", "--models", "tiny-random-qwen2", "--sources", "unseen",
                 "--steps", "2", "--share-m", "all", "1", "--run", str(shared), "--quiet"]) == 0
    assert {r["share_m"] for r in ResultStore(shared).rows()} == {0, 1}
    fewer = tmp_path / "t1-fewer"
    assert main(["experiment", "table1", "--scale", "cpu", "--models", "tiny-random-qwen2", "--sources", "unseen",
                 "--steps", "2", "--texts", "1", "--run", str(fewer), "--quiet"]) == 0
    first = {r["text_id"] for r in ResultStore(fewer).rows()}
    assert first == {load_texts("unseen", 1)[0].id} and first < {r["text_id"] for r in rows}  # the source's first, as in the larger run
    # a bad model or source is refused before a run directory is made
    for flag, value, message in (("--models", "gpt-17", "unknown model 'gpt-17'"),
                                 ("--sources", "pg19", "unknown text source(s) 'pg19'")):
        assert main(["experiment", "table1", "--scale", "cpu", flag, value, "--run", str(tmp_path / value)]) == 2
        assert message in capsys.readouterr().err and not (tmp_path / value).exists()


def test_report_capacity_section_puts_recipes_side_by_side(tmp_path):
    for recipe in ("paper", "large-init"):
        Sweep(tiny_config(name="capacity-cpu", lengths=[2, 4, 19], arrangements=["e-m"], capacity=True, recipe=recipe,
                          overrides={"lr": 0.1, "max_steps": 30}), tmp_path / recipe).run(progress=False)
    from prototokens.report import write_report

    text = write_report(tmp_path).read_text()
    section = text.split("## Capacity search by recipe")[1]
    summary = [line for line in section.splitlines() if line.startswith("| tiny-random-llama | inline")]
    assert {line.split(" | ")[3] for line in summary} == {"paper", "large-init"}
    per_text = [line for line in section.splitlines() if "inline-" in line]
    assert len(per_text) == 2 * len(TEXTS)
    assert (tmp_path / "figures" / "capacity.png").stat().st_size > 1000


def test_report_keeps_recipes_apart_in_every_table(tmp_path):
    for recipe in ("paper", "large-init"):
        for name, extra in (("table1-cpu", {}), ("table2-m-cpu", {"share_m": [1, 3]}), ("table4-cpu", {"batch": 1})):
            Sweep(tiny_config(name=name, lengths=[2], arrangements=["e-m"], recipe=recipe,
                              overrides={"max_steps": 3}, **extra), tmp_path / f"{name}-{recipe}").run(progress=False)
    from prototokens.report import write_report

    text = write_report(tmp_path).read_text()
    for heading, first_cell in (("## Table 1", "| [e][m]x(N-1) |"), ("## Table 2: shared m", "| 1 |"),
                                ("## Table 4", "| tiny-random-llama |")):
        section = text.split(heading)[1].split("Paper")[0]
        lines = [line for line in section.splitlines() if line.startswith(first_cell)]
        assert {cell for line in lines for cell in line.split(" | ")} >= {"paper", "large-init"}, section


def test_report_marks_an_unfinished_capacity_search_as_a_lower_bound(tmp_path):
    from prototokens.report import write_report

    cfg = tiny_config(name="capacity-cpu", lengths=[2, 4, 19], arrangements=["e-m"], capacity=True,
                      overrides={"lr": 0.1, "max_steps": 30})
    Sweep(cfg, tmp_path / "done").run(progress=False)  # every text fails by N = 19: its search has ended
    # the same search stopped after its first length (as a killed or still running sweep leaves it)
    Sweep(tiny_config(name="capacity-cpu", lengths=[2], arrangements=["e-m"], capacity=True, recipe="large-init",
                      overrides={"lr": 0.1, "max_steps": 60}), tmp_path / "part").run(progress=False)
    config = tmp_path / "part" / "config.json"
    config.write_text(config.read_text().replace('"lengths": [\n  2\n ]', '"lengths": [\n  2,\n  4\n ]'))
    assert '"lengths": [\n  2,\n  4\n ]' in config.read_text()
    section = write_report(tmp_path).read_text().split("## Capacity search by recipe")[1].split("Paper")[0]
    part = [line for line in section.splitlines() if "| large-init |" in line and "inline-" in line]
    done = [line for line in section.splitlines() if "| paper |" in line and "inline-" in line]
    assert part and all("| >= 2 |" in line and "(search unfinished)" in line for line in part)
    assert done and not any("unfinished" in line or ">=" in line for line in done)
    assert any("| 2 |" in line or "| 4 |" in line for line in done)  # a capacity below the grid's top, final
    n_open = len(part)
    assert f"| {len(TEXTS)} ({n_open} unfinished) |" in section
    summary = [line for line in section.splitlines() if line.startswith("| tiny-random-llama | inline")]
    assert sum("unfinished" in line for line in summary) == 1  # the finished search's failures are final


def test_report_counts_capacity_by_each_runs_own_success_accuracy(tmp_path):
    from prototokens.report import write_report

    Sweep(tiny_config(name="capacity-cpu", lengths=[2, 4, 19], arrangements=["e-m"], capacity=True,
                      overrides={"lr": 0.1, "max_steps": 30}), tmp_path / "run").run(progress=False)
    rows = ResultStore(tmp_path / "run").rows()
    assert any(r["accuracy"] < 0.99 for r in rows)  # some fit failed at the default success accuracy
    config = tmp_path / "run" / "config.json"
    saved = json.loads(config.read_text())
    config.write_text(json.dumps({**saved, "success": 0.0}))  # a run that counted every fit as reached
    section = write_report(tmp_path).read_text().split("## Capacity search by recipe")[1].split("Paper")[0]
    assert "first failure (accuracy < 0)" in section
    for text_id in {r["text_id"] for r in rows}:
        top = max(r["n"] for r in rows if r["text_id"] == text_id)
        line = next(line for line in section.splitlines() if f"| {text_id} |" in line)
        assert f"| {'>= ' if top < 19 else ''}{top} |" in line, line
