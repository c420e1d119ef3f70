"""Saving, loading and refusing artefacts."""

import json

import pytest
import torch
from safetensors.torch import save_file

import prototokens as pt

from .conftest import TINY_RECIPE, _tiny


@pytest.fixture(scope="module")
def fitted():
    lm = _tiny("llama")
    return lm, pt.fit(lm, ["Hi there!", "Hello"], seeds=2, share_m=0, recipe=TINY_RECIPE)


def test_round_trip_keeps_vectors_and_header(fitted, tmp_path):
    lm, fit = fitted
    path = fit.save(tmp_path / "f.safetensors")
    back = pt.ProtoTokens.load(path)
    assert torch.equal(back.e, fit.e) and torch.equal(back.m, fit.m)
    assert len(back.m) == 1  # the shared m is stored once
    assert [r.m_index for r in back.rows] == [0, 0, 0, 0]
    for a, b in zip(back.rows, fit.rows, strict=True):
        assert (a.token_ids, a.seed, a.accuracy, a.steps, a.correct, a.status, a.text) == \
               (b.token_ids, b.seed, b.accuracy, b.steps, b.correct, b.status, b.text)
    assert back.model_name == "tiny-random-llama" and back.fingerprint == lm.fingerprint
    assert back.recipe == TINY_RECIPE.to_dict() and back.sharing == {"e": 1, "m": 0}
    assert back.version == pt.__version__ and back.dtype == "fp32"
    assert pt.decode_text(lm, back, 0) == "Hi there!"


def test_saved_file_honours_the_umask(fitted, tmp_path):
    import os

    _, fit = fitted
    old = os.umask(0o022)
    try:
        path = fit.save(tmp_path / "f.safetensors")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o644  # safetensors alone writes 0600


def test_header_is_plain_json_in_safetensors_metadata(fitted, tmp_path):
    from safetensors import safe_open

    _, fit = fitted
    path = fit.save(tmp_path / "f.safetensors")
    with safe_open(str(path), "pt") as f:
        head = json.loads(f.metadata()["prototokens"])
        assert set(f.keys()) == {"e", "m", "e_index", "m_index", "target_ids"}
    assert head["arrangement"] == "e-m" and head["model"] == "tiny-random-llama"
    assert head["rows"][0]["token_ids"] == fit.rows[0].token_ids
    assert head["recipe"]["lr"] == 0.1 and head["dtype"] == "fp32"


def test_a_file_without_a_recorded_dtype_still_loads(fitted, tmp_path):
    from safetensors import safe_open

    _, fit = fitted
    path = fit.save(tmp_path / "f.safetensors")
    with safe_open(str(path), "pt") as f:
        head = json.loads(f.metadata()["prototokens"])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    del head["dtype"]  # as written before the dtype was recorded
    save_file(tensors, str(path), metadata={"prototokens": json.dumps(head)})
    back = pt.ProtoTokens.load(path)
    assert back.dtype is None and torch.equal(back.e, fit.e)


def test_decoding_with_another_model_is_refused(fitted):
    _, fit = fitted
    with pytest.raises(pt.PrototokensError, match="fitted on 'tiny-random-llama'"):
        pt.decode(_tiny("qwen2"), fit)


def test_missing_file(tmp_path):
    with pytest.raises(pt.PrototokensError, match="no such file"):
        pt.ProtoTokens.load(tmp_path / "nope.safetensors")


def test_truncated_file(fitted, tmp_path):
    _, fit = fitted
    path = fit.save(tmp_path / "f.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(pt.PrototokensError, match="not a readable safetensors"):
        pt.ProtoTokens.load(path)


def test_garbage_file(tmp_path):
    path = tmp_path / "g.safetensors"
    path.write_bytes(b"\x00\x01garbage" * 10)
    with pytest.raises(pt.PrototokensError, match="not a readable safetensors"):
        pt.ProtoTokens.load(path)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "w.safetensors"
    save_file({"weight": torch.zeros(2, 2)}, str(path))
    with pytest.raises(pt.PrototokensError, match="not a prototokens artefact"):
        pt.ProtoTokens.load(path)


def test_damaged_header(tmp_path):
    path = tmp_path / "d.safetensors"
    save_file({"e": torch.zeros(1, 2)}, str(path), metadata={"prototokens": "{not json"})
    with pytest.raises(pt.PrototokensError, match="damaged"):
        pt.ProtoTokens.load(path)


def test_save_into_missing_directory(fitted, tmp_path):
    _, fit = fitted
    with pytest.raises(pt.PrototokensError, match="does not exist"):
        fit.save(tmp_path / "no" / "such" / "dir.safetensors")


def test_row_out_of_range(fitted):
    lm, fit = fitted
    with pytest.raises(pt.PrototokensError, match="out of range"):
        pt.decode(lm, fit, 99)
