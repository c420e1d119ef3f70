"""The rerunnable experiment scripts under experiments/ (run as a user would, on a tiny model)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


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
    import importlib.util

    import prototokens as pt

    spec = importlib.util.spec_from_file_location("recipe_ablation", ROOT / "experiments" / "recipe_ablation.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    arrangement, changes = mod.VARIANTS["init x30, lr 0.3, focal 2, cosine 5000"]
    named = pt.get_recipe("recommended-cosine")
    for budget in (300, 2000, 5000):
        variant = pt.get_recipe("paper", max_steps=budget, **changes).replace(name=named.name)
        assert arrangement == "e-m" and variant == named.replace(max_steps=budget)
