"""The command line: the contract (flags, JSON fields) and one-line errors for bad input."""

import json
import subprocess
import sys

import pytest
import torch

import prototokens as pt
from prototokens.cli import main

# tiny random models fit with the paper's optimiser at lr 0.1; `recommended`'s x30 init is tuned to SmolLM2
TINY = ["--model", "tiny-random-llama", "--device", "cpu", "--recipe", "paper", "--lr", "0.1", "--steps", "300", "--quiet"]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    path = tmp_path_factory.mktemp("cli") / "hi.safetensors"
    assert main(["fit", "--text", "Hi there!", *TINY, "--seeds", "2", "--out", str(path)]) == 0
    return path


def test_fit_json_contract(capsys, tmp_path):
    out_file = tmp_path / "f.safetensors"
    code, out, _ = run(capsys, "fit", "--text", "Hello!", *TINY, "--out", str(out_file), "--json")
    assert code == 0
    d = json.loads(out)
    for key in ("accuracy", "c_tokens", "n_tokens", "steps", "seconds"):
        assert key in d
    assert d["accuracy"] == 1.0 and d["n_tokens"] == 6 and d["c_tokens"] == 6
    assert out_file.exists()


@pytest.mark.parametrize("recipe", ["paper", "recommended"])
def test_fit_selects_a_named_recipe_and_overrides(capsys, tmp_path, recipe):
    out_file = tmp_path / "f.safetensors"
    code, _, _ = run(capsys, "fit", "--text", "Hello!", *TINY, "--recipe", recipe, "--focal-gamma", "1",
                     "--restarts", "1", "--restart-after", "50", "--plateau-after", "40", "--plateau-factor", "0.3",
                     "--plateau-min", "0.05", "--plateau-cycle", "3", "--schedule", "cosine", "--warmup-steps", "2",
                     "--decay-steps", "3000", "--weight-decay", "0", "--betas", "0.9", "0.999", "--phase-steps", "500",
                     "--phase-lr", "0.02", "--phase-weight-decay", "0.001", "--m-init-scale", "3",
                     "--out", str(out_file))
    assert code == 0
    saved = pt.ProtoTokens.load(out_file).recipe
    base = pt.get_recipe(recipe)
    assert saved["name"] == recipe and saved["init_scale"] == base.init_scale and saved["lr"] == 0.1  # TINY sets --lr
    assert saved["focal_gamma"] == 1.0 and saved["restarts"] == 1 and saved["restart_after"] == 50
    assert saved["plateau_after"] == 40 and saved["plateau_factor"] == 0.3 and saved["plateau_min"] == 0.05
    assert saved["plateau_cycle"] == 3
    assert saved["schedule"] == "cosine" and saved["warmup_steps"] == 2 and saved["decay_steps"] == 3000
    assert saved["weight_decay"] == 0 and saved["betas"] == [0.9, 0.999]
    assert saved["phase_steps"] == 500 and saved["phase_lr"] == 0.02 and saved["phase_weight_decay"] == 0.001
    assert saved["m_init_scale"] == 3.0


def test_fit_notes_steps_past_the_end_of_a_fixed_decay(capsys, tmp_path):
    argv = ["fit", "--text", "Hi!", *TINY, "--schedule", "cosine", "--out", str(tmp_path / "f.safetensors")]
    code, _, err = run(capsys, *argv, "--steps", "8", "--decay-steps", "5")
    assert code == 0 and "decays its rate to 0 by step 5" in err
    code, _, err = run(capsys, *argv, "--steps", "5", "--decay-steps", "5")
    assert code == 0 and "note" not in err


def test_fit_resumes_from_its_snapshot_file(capsys, tmp_path):
    snap, out = tmp_path / "fit.pt", tmp_path / "f.safetensors"
    argv = ["fit", "--text", "Hello there", *TINY, "--out", str(out), "--snapshot", str(snap), "--json"]
    code, first, _ = run(capsys, *argv)
    assert code == 0 and not snap.exists()  # deleted once the fit is done
    snap.write_bytes(b"junk")
    code, _, err = run(capsys, *argv)
    assert code == 2 and "not a readable snapshot" in err and err.count("\n") == 1
    assert snap.exists()  # kept for the user to look at
    snap.unlink()
    code, again, _ = run(capsys, *argv)
    assert code == 0 and json.loads(again)["rows"] == json.loads(first)["rows"]


def test_fit_from_file(capsys, tmp_path):
    src = tmp_path / "t.txt"
    src.write_text("From a file\n")
    code, out, _ = run(capsys, "fit", "--file", str(src), *TINY, "--out", str(tmp_path / "f.safetensors"), "--json")
    assert code == 0 and json.loads(out)["n_tokens"] == len("From a file")


def test_fit_starts_from_a_saved_fit(capsys, tmp_path, fitted):
    out = tmp_path / "again.safetensors"
    argv = ["fit", "--text", "Hi there!", *TINY, "--out", str(out), "--json"]
    code, printed, _ = run(capsys, *argv, "--seeds", "2", "--init-from", str(fitted))
    assert code == 0 and [r["steps"] for r in json.loads(printed)["rows"]] == [0, 0]  # exact from the start
    assert torch.equal(pt.ProtoTokens.load(out).e, pt.ProtoTokens.load(fitted).e)
    for extra, message in ((["--init-from", str(fitted)], "needs 1 e and 1 m"),
                           (["--init-from", str(tmp_path / "none.safetensors")], "no such file"),
                           (["--init-from", str(fitted), "--seeds", "2", "--model", "tiny-random-qwen2"], "fitted on")):
        code, _, err = run(capsys, *argv, *extra)
        assert code == 2 and message in err and err.count("\n") == 1


def test_decode_prints_the_text(capsys, fitted):
    code, out, _ = run(capsys, "decode", str(fitted), "--device", "cpu")
    assert code == 0 and out == "Hi there!\n"
    code, out, _ = run(capsys, "decode", str(fitted), "--device", "cpu", "--json")
    d = json.loads(out)
    assert d["text"] == "Hi there!" and d["exact"] is True and d["wrong_positions"] == []
    assert d["token_ids"] == list(b"Hi there!") or len(d["token_ids"]) == 9


def test_decode_names_the_wrong_positions(capsys, tmp_path):
    path = tmp_path / "short.safetensors"
    argv = [a if a != "300" else "2" for a in TINY]  # two steps: far from exact
    assert main(["fit", "--text", "Hi there!", *argv, "--out", str(path)]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "decode", str(path), "--device", "cpu", "--json")
    d = json.loads(out)
    code2, out2, _ = run(capsys, "eval", str(path), "--device", "cpu", "--json")
    e = json.loads(out2)
    assert code == code2 == 0 and d["exact"] is False and d["wrong_positions"]
    assert len(d["wrong_positions"]) == e["n_tokens"] - e["c_tokens"]
    assert all(0 <= i < e["n_tokens"] for i in d["wrong_positions"])


def test_eval_reports_metrics(capsys, fitted):
    code, out, _ = run(capsys, "eval", str(fitted), "--device", "cpu", "--json")
    d = json.loads(out)
    assert code == 0 and d["accuracy"] == 1.0 and d["c_tokens"] == 9 and d["h_lm_nats"] > 0
    assert len(d["rows"]) == 2
    code, out, _ = run(capsys, "eval", str(fitted), "--device", "cpu")
    assert "H_LM" in out and "nats" in out


def test_eval_runs_the_model_in_the_dtype_of_the_fit(capsys, tmp_path, fitted):
    bf16 = tmp_path / "bf16.safetensors"
    assert main(["fit", "--text", "Hi there!", *TINY[:-3], "--steps", "3", "--quiet", "--dtype", "bf16",
                 "--out", str(bf16)]) == 0
    assert pt.ProtoTokens.load(bf16).dtype == "bf16"
    capsys.readouterr()
    for path, dtype, noted in [(bf16, "auto", False), (bf16, "fp32", True), (fitted, "auto", False),
                               (fitted, "bf16", True)]:
        code, out, err = run(capsys, "eval", str(path), "--device", "cpu", "--dtype", dtype, "--json")
        assert code == 0 and json.loads(out)["n_tokens"] == 9
        assert ("was fitted in" in err) == noted, (path.name, dtype, err)


def test_models_lists_names(capsys):
    code, out, _ = run(capsys, "models")
    assert code == 0 and "smollm2-135m" in out and "tiny-random-gpt_neox" in out
    code, out, _ = run(capsys, "models", "--json")
    assert {r["name"] for r in json.loads(out)} >= {"smollm2-135m", "gemma3-270m", "tiny-random-qwen2"}


def test_demo_on_a_tiny_model(capsys, tmp_path):
    code, out, _ = run(capsys, "demo", "--model", "tiny-random-llama", "--device", "cpu", "--text", "Hi!",
                       "--out", str(tmp_path / "d.safetensors"), "--strict")
    assert code == 0 and "exact       yes" in out


@pytest.mark.parametrize("argv,message", [
    (["fit", "--text", "", "--out", "x.safetensors"], "text 0 is empty"),
    (["fit", "--text", "   ", "--out", "x.safetensors"], "text 0 is empty"),
    (["fit", "--text", "x" * 300, "--out", "x.safetensors"], "needs 300 positions"),
    (["fit", "--text", "hi", "--arrangement", "zigzag", "--out", "x.safetensors"], "unknown arrangement"),
    (["fit", "--file", "/no/such/file.txt", "--out", "x.safetensors"], "no such file"),
    (["fit", "--text", "hi", "--out", "/no/such/dir/x.safetensors"], "output directory does not exist"),
    (["fit", "--text", "hi", "--plateau-cycle", "3", "--out", "x.safetensors"], "plateau_cycle needs plateau_after"),
    (["fit", "--text", "hi", "--warmup-steps", "10", "--decay-steps", "5", "--out", "x.safetensors"],
     "decay_steps must be > warmup_steps"),
    (["fit", "--text", "hi", "--phase-steps", "100", "--out", "x.safetensors"], "phase_steps needs decay_steps"),
])
def test_fit_bad_input(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(capsys, *argv[:-2], *TINY, *argv[-2:])
    assert code == 2
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_unknown_model(capsys, tmp_path):
    code, _, err = run(capsys, "fit", "--text", "hi", "--model", "gpt-17", "--out", str(tmp_path / "x.safetensors"))
    assert code == 2 and "unknown model 'gpt-17'" in err


def test_margins_of_an_exact_fit_are_all_positive(fitted):
    lm = pt.load_model("tiny-random-llama", device="cpu")
    fit = pt.ProtoTokens.load(fitted)
    margins = pt.token_margins(lm, fit)
    assert fit.rows[fit.best_row()].accuracy == 1.0
    assert [r["position"] for r in margins] == list(range(fit.rows[fit.best_row()].n_tokens))
    assert all(r["margin"] > 0 and r["predicted"] == r["target"] for r in margins)


def test_decode_margins_rank_the_positions(capsys, tmp_path):
    path = tmp_path / "short.safetensors"
    argv = [a if a != "300" else "5" for a in TINY]  # five steps: some positions right, some wrong
    assert main(["fit", "--text", "Hi there, you!", *argv, "--out", str(path)]) == 0
    capsys.readouterr()
    code, out, _ = run(capsys, "decode", str(path), "--device", "cpu", "--json", "--margins", "100")
    d = json.loads(out)
    margins = d["margins"]
    assert code == 0 and len(margins) == len(d["token_ids"])  # K past N: every position, once
    assert sorted(r["position"] for r in margins) == list(range(len(d["token_ids"])))
    assert [r["margin"] for r in margins] == sorted(r["margin"] for r in margins)
    # a negative margin is exactly a wrong position, and `predicted` is what decode read there
    assert d["wrong_positions"]
    assert sorted(r["position"] for r in margins if r["margin"] < 0) == d["wrong_positions"]
    assert all(d["token_ids"][r["position"]] == r["predicted"] for r in margins)
    assert all(0 < r["p_target"] < 1 for r in margins)
    code, out, _ = run(capsys, "decode", str(path), "--device", "cpu", "--margins", "2")
    assert code == 0 and out.count("\nposition ") == 2
    with pytest.raises(SystemExit) as e:
        main(["decode", str(path), "--margins", "0"])
    assert e.value.code == 2 and "--margins: must be >= 1" in capsys.readouterr().err


@pytest.mark.parametrize("content,message", [
    (None, "no such file"),
    (b"", "not a readable safetensors"),
    (b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":", "not a readable safetensors"),
])
def test_decode_bad_files(capsys, tmp_path, content, message):
    path = tmp_path / "x.safetensors"
    if content is not None:
        path.write_bytes(content)
    code, _, err = run(capsys, "decode", str(path))
    assert code == 2 and message in err and err.count("\n") == 1


def test_decode_truncated_file(capsys, fitted, tmp_path):
    path = tmp_path / "t.safetensors"
    path.write_bytes(fitted.read_bytes()[:-100])
    code, _, err = run(capsys, "decode", str(path))
    assert code == 2 and "not a readable safetensors" in err


def test_decode_with_another_model_is_refused(capsys, fitted):
    code, _, err = run(capsys, "decode", str(fitted), "--model", "tiny-random-qwen2", "--device", "cpu")
    assert code == 2 and "fitted on 'tiny-random-llama'" in err
    # the file is untouched and still decodes with its own model
    assert main(["decode", str(fitted), "--device", "cpu"]) == 0


def test_bad_flag_values_exit_nonzero(capsys):
    for argv in (["fit", "--text", "x", "--seeds", "0", "--out", "o"], ["fit", "--text", "x", "--out", "o", "--share-m", "two"],
                 ["fit", "--text", "x", "--out", "o", "--snapshot", "s.pt", "--snapshot-every", "-1"],
                 ["sweep", "c.toml", "--snapshot-every", "soon"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert "Traceback" not in capsys.readouterr().err


def test_help_has_examples(capsys):
    for cmd in ("fit", "decode", "eval", "models", "demo"):
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        assert "examples:" in capsys.readouterr().out


def test_real_process_prints_one_line_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "prototokens.cli", "decode", str(tmp_path / "missing.safetensors")],
                          capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr


def test_geometry_commands_and_report(capsys, tmp_path):
    fits = tmp_path / "geo"
    code, out, _ = run(capsys, "geometry", "build", str(fits), "--model", "tiny-random-llama", "--device", "cpu",
                       "--contexts", "2", "--continuations", "2", "--tokens", "4", "--seeds", "2", "--steps", "200",
                       "--quiet")
    assert code == 0 and "6 solutions" in out  # per context: 1 continuation x 1 seed + the last x 2 seeds
    code, out, _ = run(capsys, "geometry", "run", str(fits), "--device", "cpu", "--analyses", "distances",
                       "interpolation", "--min-accuracy", "0")
    assert code == 0 and (fits / "geometry.json").exists() and (fits / "distances.png").exists()
    code, _, err = run(capsys, "geometry", "run", str(fits), "--device", "cpu", "--min-accuracy", "1.5")
    assert code == 2 and "no solution with accuracy >= 1.5" in err and err.strip().count("\n") == 0
    code, out, _ = run(capsys, "report", str(tmp_path))
    assert code == 0 and "## Section 4: geometry" in (tmp_path / "report.md").read_text()


def test_models_install_bad_input_is_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOTOKENS_CACHE", str(tmp_path))
    bogus = tmp_path / "x.gguf"
    bogus.write_bytes(b"not the model")
    for argv, message in ((["gpt-17", str(bogus)], "unknown built-in model 'gpt-17'"),
                          (["smollm2-135m", str(tmp_path / "none.gguf")], "GGUF file not found"),
                          (["smollm2-135m", str(bogus)], "is not smollm2-135m's GGUF file")):
        code, _, err = run(capsys, "models", "--install", *argv)
        assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "models").exists()  # nothing half-written
