"""The rerunnable experiment scripts under experiments/ (run as a user would, on a tiny model)."""

import dataclasses
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

import prototokens as pt

ROOT = Path(__file__).resolve().parents[1]


def script_module(name: str):
    """experiments/NAME.py imported as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def ablation(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "experiments" / "recipe_ablation.py"), "--model", "tiny-random-llama",
           "--device", "cpu", "--tokens", "4", "--texts", "1", "--variants", "paper", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_recipe_ablation_resumes_its_json_and_refuses_other_settings(tmp_path):
    out = tmp_path / "ablation.json"
    first = ablation("--steps", "3", "--json", str(out))
    assert first.returncode == 0, first.stderr
    stored = out.read_text()
    rows = json.loads(stored)["results"]
    assert [r["variant"] for r in rows] == ["paper"] and rows[0]["rows"][0]["n_tokens"] == 4

    again = ablation("--steps", "3", "--json", str(out))  # same settings: kept, not refitted
    assert again.returncode == 0, again.stderr
    assert json.loads(out.read_text())["results"][0]["seconds"] == rows[0]["seconds"]

    other = ablation("--steps", "5", "--json", str(out))  # other budget: refused, file untouched
    assert other.returncode != 0
    assert other.stderr.strip().count("\n") == 0 and "steps 3 here, 5 asked" in other.stderr
    assert out.read_text() == stored


def test_recipe_ablation_stopped_midway_keeps_every_stored_variant(tmp_path, monkeypatch):
    out = tmp_path / "ablation.json"
    first = ablation("--steps", "3", "--json", str(out), "--variants", "paper", "large-init")
    assert first.returncode == 0, first.stderr
    mod = script_module("recipe_ablation")

    def stop(lm, name, *args):  # the run is killed while it fits its one new variant
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "run_variant", stop)
    monkeypatch.setattr(sys, "argv", ["recipe_ablation.py", "--model", "tiny-random-llama", "--device", "cpu",
                                      "--tokens", "4", "--texts", "1", "--steps", "3", "--json", str(out),
                                      "--variants", "paper", "init x3, lr 0.03", "large-init"])
    with pytest.raises(KeyboardInterrupt):
        mod.main()
    assert sorted(r["variant"] for r in json.loads(out.read_text())["results"]) == ["large-init", "paper"]


def test_recipe_ablation_shares_one_m_on_request(tmp_path):
    out = tmp_path / "shared.json"
    res = ablation("--texts", "2", "--steps", "2", "--share-m", "0", "--json", str(out))
    assert res.returncode == 0, res.stderr
    stored = json.loads(out.read_text())
    assert stored["share_m"] == 0 and "one shared m" in res.stdout
    # an old file (no share_m key) counts as own m, so a shared-m rerun on it is refused
    del stored["share_m"]
    out.write_text(json.dumps(stored))
    again = ablation("--texts", "2", "--steps", "2", "--share-m", "0", "--json", str(out))
    assert again.returncode != 0 and "share_m 1 here, 0 asked" in again.stderr


def test_recipe_ablation_rejects_an_unknown_model_in_one_line(tmp_path):
    res = ablation("--steps", "1", "--model", "no-such-model")  # the later --model wins
    assert res.returncode != 0 and res.stderr.startswith("error: ") and "Traceback" not in res.stderr


def test_recipe_ablation_variant_cosine_5000_is_the_named_recipe_whatever_the_budget():
    # docs/recipe.md reports this variant's shorter-budget runs as `recommended-cosine`
    mod = script_module("recipe_ablation")
    arrangement, changes = mod.VARIANTS["init x30, lr 0.3, focal 2, cosine 5000"]
    named = pt.get_recipe("recommended-cosine")
    for budget in (300, 2000, 5000):
        variant = pt.get_recipe("paper", max_steps=budget, **changes).replace(name=named.name)
        assert arrangement == "e-m" and variant == named.replace(max_steps=budget)


LONG_FIT = ["--model", "tiny-random-llama", "--device", "cpu", "--tokens", "6", "--every", "0"]


def long_fit(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, str(ROOT / "experiments" / "long_fit.py"), *LONG_FIT, *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)


def test_long_fit_resumes_a_killed_fit_step_for_step(tmp_path, monkeypatch):
    whole = tmp_path / "whole.json"
    res = long_fit("--steps", "8", "--set", "lr=0.05", "init_scale=1", "--json", str(whole))
    assert res.returncode == 0, res.stderr
    ref = json.loads(whole.read_text())
    assert ref["recipe"]["lr"] == 0.05 and ref["recipe"]["max_steps"] == 8
    assert [p["step"] for p in ref["trajectory"]] == list(range(1, 9))
    assert ref["result"]["steps"] <= 8 and not (tmp_path / "whole.json.pt").exists()
    assert ref["result"]["fit_file"] == "whole.safetensors" and (tmp_path / "whole.safetensors").exists()
    assert all(p["e_norm"] > 0 and p["m_norm"] > 0 for p in ref["trajectory"])

    # the same fit, killed after its 3rd snapshot (in process), then rerun as a command
    mod = script_module("long_fit")
    save = mod.TrajectorySnapshots.save

    def save_then_die(self, state):
        save(self, state)
        if len(self.out["trajectory"]) == 3:
            raise KeyboardInterrupt

    part = tmp_path / "part.json"
    monkeypatch.setattr(mod.TrajectorySnapshots, "save", save_then_die)
    monkeypatch.setattr(sys, "argv", ["long_fit.py", *LONG_FIT, "--steps", "8", "--set", "lr=0.05", "init_scale=1",
                                      "--json", str(part)])
    try:
        mod.main()
        raise AssertionError("the fit was not interrupted")
    except KeyboardInterrupt:
        pass
    assert (tmp_path / "part.json.pt").exists() and json.loads(part.read_text())["result"] is None
    res = long_fit("--steps", "8", "--set", "lr=0.05", "init_scale=1", "--json", str(part))
    assert res.returncode == 0, res.stderr
    got = json.loads(part.read_text())
    strip = [{k: v for k, v in p.items() if k != "seconds"} for p in ref["trajectory"]]
    assert [{k: v for k, v in p.items() if k != "seconds"} for p in got["trajectory"]] == strip
    assert {k: v for k, v in got["result"].items() if k not in ("seconds", "fit_file")} == \
        {k: v for k, v in ref["result"].items() if k not in ("seconds", "fit_file")}

    again = long_fit("--steps", "8", "--set", "lr=0.05", "init_scale=1", "--json", str(part))  # done: not refitted
    assert again.returncode == 0 and json.loads(again.stdout) == got["result"]
    other = long_fit("--steps", "8", "--set", "lr=0.1", "init_scale=1", "--json", str(part))
    assert other.returncode != 0 and "other settings (recipe)" in other.stderr
    assert json.loads(part.read_text()) == got


def test_long_fit_second_phase_starts_from_a_saved_fit(tmp_path):
    first = tmp_path / "first.json"
    assert long_fit("--steps", "3", "--set", "lr=0.05", "init_scale=1", "--json", str(first)).returncode == 0
    done = json.loads(first.read_text())["result"]
    assert done["accuracy"] < 1
    second = tmp_path / "second.json"
    res = long_fit("--steps", "200", "--set", "lr=0.05", "--init-from", str(tmp_path / "first.safetensors"),
                   "--json", str(second))
    assert res.returncode == 0, res.stderr
    got = json.loads(second.read_text())
    assert got["init_from"] == "first.safetensors" and got["trajectory"][0]["best_correct"] >= done["correct"]
    assert got["result"]["correct"] > done["correct"]
    # the first phase's JSON holds a cold start: not to be mixed with a second phase
    res = long_fit("--steps", "3", "--set", "lr=0.05", "init_scale=1", "--init-from",
                   str(tmp_path / "first.safetensors"), "--json", str(first))
    assert res.returncode != 0 and "other settings (init_from)" in res.stderr


def test_long_fit_of_several_texts_reports_each_and_phases_from_their_fit(tmp_path):
    first = tmp_path / "two.json"
    res = long_fit("--texts", "2", "--steps", "3", "--set", "lr=0.05", "init_scale=1", "--json", str(first))
    assert res.returncode == 0, res.stderr
    got = json.loads(first.read_text())
    assert len(got["text_ids"]) == 2 and got["text_ids"][0] == got["text_id"] != got["text_ids"][1]
    assert [t["text_id"] for t in got["result"]["texts"]] == got["text_ids"]
    for p in got["trajectory"]:
        assert len(p["best_correct_per_text"]) == 2 and sum(p["best_correct_per_text"]) == p["best_correct"]
    fit = pt.ProtoTokens.load(str(tmp_path / "two.safetensors"))
    assert [sum(r.correct) for r in fit.rows] == [t["correct"] for t in got["result"]["texts"]]
    assert len(fit.e) == len(fit.m) == 2  # each text its own e and m
    # a second phase of both texts from their fit; a different number of texts is refused
    second = tmp_path / "second.json"
    res = long_fit("--texts", "2", "--steps", "3", "--set", "lr=0.05", "--init-from", str(tmp_path / "two.safetensors"),
                   "--json", str(second))
    assert res.returncode == 0, res.stderr
    again = json.loads(second.read_text())
    assert again["trajectory"][0]["best_correct_per_text"][0] >= got["result"]["texts"][0]["correct"]
    res = long_fit("--steps", "3", "--init-from", str(tmp_path / "two.safetensors"), "--json", str(tmp_path / "one.json"))
    assert res.returncode != 0 and res.stderr.startswith("error: ") and "2 e and 2 m" in res.stderr


def test_long_fit_rejects_bad_input_in_one_line(tmp_path):
    for args in (["--set", "lr"], ["--set", "bogus=1"], ["--set", "lr=fast"], ["--model", "no-such-model"],
                 ["--texts", "0"]):
        res = long_fit("--steps", "1", *args, "--json", str(tmp_path / "x.json"))
        assert res.returncode != 0 and res.stderr.startswith("error: ") and res.stderr.strip().count("\n") == 0
        assert not (tmp_path / "x.json").exists()


def test_precision_eval_decodes_each_row_in_each_dtype(tmp_path):
    from .conftest import TINY_RECIPE, _tiny

    lm = _tiny("llama")
    fit = pt.fit(lm, ["Hi there!", "Hello"], recipe=TINY_RECIPE)
    path = fit.save(tmp_path / "f.safetensors")
    cmd = [sys.executable, str(ROOT / "experiments" / "precision_eval.py"), str(path), "--device", "cpu",
           "--dtypes", "fp32", "bf16", "--round-inputs", "--json", str(tmp_path / "p.json")]
    res = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = json.loads((tmp_path / "p.json").read_text())["rows"]
    bf16 = pt.load_model("tiny-random-llama", device="cpu", dtype="bf16")
    rounded = dataclasses.replace(fit, e=fit.e.bfloat16().float(), m=fit.m.bfloat16().float())
    assert len(rows) == 2
    for i, r in enumerate(rows):
        target = fit.rows[i].token_ids
        right = {"fp32": pt.decode(lm, fit, i), "bf16": pt.decode(bf16, fit, i),
                 "fp32, e/m in bf16": pt.decode(lm, rounded, i)}
        assert r["correct"] == {k: sum(a == b for a, b in zip(v, target, strict=True)) for k, v in right.items()}
        assert r["changed_positions"] == [j for j in range(len(target))
                                          if right["bf16"][j] != right["fp32"][j]
                                          or right["fp32, e/m in bf16"][j] != right["fp32"][j]]
    bad = subprocess.run([*cmd[:2], str(tmp_path / "p.json")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert bad.returncode != 0 and bad.stderr.startswith("error: ") and bad.stderr.strip().count("\n") == 0
    # the summary counts a state once however many files hold it; N differs per text, so one line per row
    fit.save(tmp_path / "copy.safetensors")
    res = subprocess.run([*cmd[:2], str(path), str(tmp_path / "copy.safetensors"), "--device", "cpu",
                          "--json", str(tmp_path / "two.json")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr
    res = subprocess.run([*cmd[:2], "--summary", str(tmp_path / "two.json")], capture_output=True, text=True,
                         cwd=ROOT, timeout=300)
    lines = [ln.split(" | ") for ln in res.stdout.splitlines() if ln.startswith("| tiny-random-llama")]
    assert res.returncode == 0 and sorted(int(ln[1]) for ln in lines) == sorted(len(r.token_ids) for r in fit.rows)
    for ln, r in zip(sorted(lines, key=lambda ln: int(ln[1])), sorted(rows, key=lambda r: r["n_tokens"]), strict=True):
        assert ln[2] == "1" and ln[3] == str(int(r["correct"]["fp32"] >= 0.99 * r["n_tokens"]))


def test_recipe_ablation_betas_and_plain_loss_variants_change_one_field_of_recommended_cosine():
    mod = script_module("recipe_ablation")
    cos = pt.get_recipe("recommended-cosine")
    for name, field in (("init x30, lr 0.3, focal 2, cosine 5000, betas (0.9, 0.999)", {"betas": (0.9, 0.999)}),
                        ("init x30, lr 0.3, cosine 5000", {"focal_gamma": 0.0})):
        arrangement, changes = mod.VARIANTS[name]
        variant = pt.get_recipe("paper", **changes).replace(name=cos.name)
        assert arrangement == "e-m" and variant == cos.replace(**field) != cos
    b999 = pt.get_recipe("recommended-cosine-b999")  # the betas variant is the named candidate
    assert cos.replace(betas=(0.9, 0.999), name=b999.name) == b999


@pytest.mark.parametrize("variant, recipe", [
    ("init x30, lr 0.3, focal 2, cosine 5000, no weight decay", "recommended-cosine-nowd"),
    # = the Gemma probe's `--recipe recommended-cosine-b999 --set init_scale=3` (test_engine ties the two)
    ("init x3, lr 0.3, focal 2, cosine 5000, betas (0.9, 0.999)", "recommended-cosine-b999-x3")])
def test_recipe_ablation_variant_is_the_named_recipe(variant, recipe):
    mod = script_module("recipe_ablation")
    arrangement, changes = mod.VARIANTS[variant]
    named = pt.get_recipe(recipe)
    assert arrangement == "e-m" and pt.get_recipe("paper", **changes).replace(name=named.name) == named
