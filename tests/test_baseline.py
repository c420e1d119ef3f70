"""The autoregressive [mem] baseline (Kuratov et al. 2025) on tiny random models."""

import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import prototokens as pt
from prototokens.baseline import (
    MemoryFit,
    decode_memory,
    evaluate_memory,
    fit_memory,
    greedy_decode,
    greedy_decode_batch,
    mem_token_losses,
)
from prototokens.engine import init_vectors

from .conftest import TINY_RECIPE, _tiny

FIXED = TINY_RECIPE.replace(max_steps=15, stop_accuracy=2.0)  # never stops early: compare trajectories


@pytest.fixture(scope="module")
def fitted() -> tuple[pt.FrozenLM, MemoryFit]:
    lm = _tiny("llama")
    ids = [lm.encode("Hi there!"), lm.encode("Yo")]
    return lm, fit_memory(lm, ids, seeds=2, recipe=TINY_RECIPE, texts=["Hi there!", "Yo"])


@pytest.mark.parametrize("n_mem", [1, 2])
@pytest.mark.parametrize("bos", [True, False])
def test_short_text_fits_exactly_and_greedy_decodes_it(llama, n_mem, bos):
    ids = llama.encode("Hi there!")
    fit = fit_memory(llama, [ids], n_mem=n_mem, recipe=TINY_RECIPE, bos=bos)
    assert fit.mem.shape == (1, n_mem, llama.hidden_size) and fit.mem.dtype == torch.float32
    assert fit.mem.device.type == "cpu" and fit.bos_id == (llama.bos_id if bos else None)
    r = fit.rows[0]
    assert r.status == "converged" and r.accuracy == 1.0 and all(r.correct)
    assert 0 < r.steps < TINY_RECIPE.max_steps
    assert greedy_decode(llama, fit.mem[0], len(ids), fit.bos_id) == ids
    assert llama.decode(decode_memory(llama, fit)) == "Hi there!"


def test_another_architecture():
    # gpt2: learnt absolute positions, a LayerNorm, a Conv1D head. (Tiny random gemma3 is no test
    # case here: its outputs echo the current input token, so a prefix cannot steer teacher-forced
    # predictions; the greedy-decoding test below covers gemma3.)
    lm = _tiny("gpt2")
    ids = lm.encode("Hi there!")
    fit = fit_memory(lm, [ids], n_mem=4, seeds=2, recipe=TINY_RECIPE)
    assert [r.accuracy for r in fit.rows] == [1.0, 1.0]
    assert decode_memory(lm, fit, 0) == decode_memory(lm, fit, 1) == ids


def test_init_is_the_engines_per_text_seed_and_index(llama):
    ids = [llama.encode("Hello"), llama.encode("abc")]
    fit = fit_memory(llama, ids, n_mem=2, seeds=[0, 5], recipe=TINY_RECIPE.replace(max_steps=0))
    keys = [(t, s, f"mem{k}") for t in ids for s in (0, 5) for k in range(2)]
    assert torch.equal(fit.mem, init_vectors(llama, keys, TINY_RECIPE).view(4, 2, -1))


def test_fitting_is_deterministic(llama):
    ids = [llama.encode("Hello there")]
    a = fit_memory(llama, ids, seeds=2, recipe=FIXED)
    b = fit_memory(llama, ids, seeds=2, recipe=FIXED)
    assert torch.equal(a.mem, b.mem)
    assert [r.correct for r in a.rows] == [r.correct for r in b.rows]
    assert not torch.equal(a.mem[0], a.mem[1])  # seeds differ


def test_a_row_fits_the_same_alone_or_in_a_batch(llama):
    enc = llama.encode
    alone = fit_memory(llama, [enc("Hello there")], seeds=[3], n_mem=2, recipe=FIXED)
    batch = fit_memory(llama, [enc("Other text!"), enc("Hello there"), enc("x")], seeds=[3], n_mem=2, recipe=FIXED)
    assert torch.allclose(alone.mem[0], batch.mem[1], atol=1e-4)
    assert alone.rows[0].correct == batch.rows[1].correct
    split = fit_memory(llama, [enc("Other text!"), enc("Hello there"), enc("x")], seeds=[3], n_mem=2, recipe=FIXED,
                       max_batch=1)
    assert torch.allclose(split.mem, batch.mem, atol=1e-4)


def test_texts_of_different_lengths_in_one_batch(llama):
    texts = ["Hi", "Hello there", "x"]
    fit = fit_memory(llama, [llama.encode(t) for t in texts], n_mem=4, recipe=TINY_RECIPE)
    assert [r.n_tokens for r in fit.rows] == [2, 11, 1]
    for i, t in enumerate(texts):
        assert fit.rows[i].accuracy == 1.0, [r.accuracy for r in fit.rows]
        assert llama.decode(decode_memory(llama, fit, i)) == t


@pytest.mark.parametrize("bos", [True, False])
def test_loss_is_teacher_forced_causal_lm_loss(llama, bos):
    # the mem loss equals the model's own loss on [mem, (BOS,) t_1..t_{N-1}] computed the plain way:
    # with BOS, t_1 is predicted at BOS (Kuratov et al.); without, at the last mem vector
    from prototokens.baseline import _embed

    ids = llama.encode("Hello")
    mem = torch.randn(1, 2, llama.hidden_size)
    lead = [llama.bos_id] if bos else []
    emb = llama.model.get_input_embeddings()(torch.tensor([lead + ids[:-1]]))
    assert torch.equal(_embed(llama, [ids], llama.bos_id if bos else None), emb)
    loss, correct = mem_token_losses(llama, mem, emb, torch.tensor([ids]))
    logits = llama.model(inputs_embeds=torch.cat([mem, emb], 1)).logits[0, 2 if bos else 1:]
    assert len(logits) == len(ids)
    ref = torch.nn.functional.cross_entropy(logits, torch.tensor(ids), reduction="none")
    assert torch.allclose(loss[0], ref, atol=1e-5)
    assert torch.equal(correct[0], logits.argmax(-1) == torch.tensor(ids))


@pytest.mark.parametrize("arch", ["llama", "gpt2", "gemma3"])
def test_greedy_decode_with_cache_matches_full_recompute(arch):
    lm = _tiny(arch)
    mem = torch.randn(2, 3, lm.hidden_size, generator=torch.Generator().manual_seed(0))
    emb = lm.model.get_input_embeddings()
    for bos_id in (None, lm.bos_id):
        got = greedy_decode_batch(lm, mem, 6, bos_id)
        for row in range(2):
            x, ref = mem[row:row + 1], []
            if bos_id is not None:
                x = torch.cat([x, emb(torch.tensor([[bos_id]]))], 1)
            for _ in range(6):
                tok = int(lm.model(inputs_embeds=x).logits[0, -1].argmax())
                ref.append(tok)
                x = torch.cat([x, emb(torch.tensor([[tok]]))], 1)
            assert got[row] == ref
        assert greedy_decode(lm, mem[1], 6, bos_id) == got[1]
    assert greedy_decode(lm, mem[0], 0) == []


def test_weights_stay_bit_identical_and_never_get_gradients(llama):
    before = {k: v.clone() for k, v in llama.model.state_dict().items()}
    fit = fit_memory(llama, [llama.encode("Hello there"), llama.encode("abc")], n_mem=2, recipe=FIXED)
    assert fit.rows[0].steps > 0
    assert all(p.grad is None and not p.requires_grad for p in llama.model.parameters())
    after = llama.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_finished_rows_leave_the_batch(llama, monkeypatch):
    sizes = []
    forward = llama.model.base_model.forward

    def spy(*a, **k):
        sizes.append(k["inputs_embeds"].shape[0])
        return forward(*a, **k)

    monkeypatch.setattr(llama.model.base_model, "forward", spy)
    fit = fit_memory(llama, [llama.encode("H"), llama.encode("A much longer text to fit here")],
                     recipe=TINY_RECIPE.replace(max_steps=30))
    assert fit.rows[0].status == "converged" and fit.rows[1].status == "max_steps"
    assert sizes[0] == 2 and sizes[-1] == 1


def test_patience_stops_a_stalled_row(llama):
    fit = fit_memory(llama, [llama.encode("A text that cannot be learnt at this rate")],
                     recipe=TINY_RECIPE.replace(lr=1e-6, max_steps=200, patience=5))
    assert fit.rows[0].status == "patience"


def test_nonfinite_loss_fails_only_that_row(llama):
    calls = {"n": 0}

    def poison(module, args, output):  # NaN into batch row 0 on the very first forward only
        calls["n"] += 1
        if calls["n"] == 1:
            hidden = output[0] if isinstance(output, tuple) else output
            hidden[0] = float("nan")
        return output

    handle = llama.model.model.layers[0].register_forward_hook(poison)
    try:
        fit = fit_memory(llama, [llama.encode("Hi there!"), llama.encode("Good")], recipe=TINY_RECIPE)
    finally:
        handle.remove()
    assert fit.rows[0].status == "failed: non-finite loss"
    assert fit.rows[1].status == "converged" and fit.rows[1].accuracy == 1.0
    assert torch.isfinite(fit.mem).all()


def test_out_of_memory_splits_the_batch(llama, monkeypatch):
    forward = llama.model.base_model.forward

    def small_memory(*a, **k):
        if k["inputs_embeds"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(*a, **k)

    monkeypatch.setattr(llama.model.base_model, "forward", small_memory)
    fit = fit_memory(llama, [llama.encode("Hi"), llama.encode("Yo")], recipe=TINY_RECIPE)
    assert [r.accuracy for r in fit.rows] == [1.0, 1.0]


def test_bad_input_is_refused(llama):
    with pytest.raises(pt.PrototokensError, match="no texts"):
        fit_memory(llama, [])
    with pytest.raises(pt.PrototokensError, match="no tokens"):
        fit_memory(llama, [[]])
    with pytest.raises(pt.PrototokensError, match="n_mem"):
        fit_memory(llama, [[1]], n_mem=0)
    with pytest.raises(pt.PrototokensError, match="positions"):
        fit_memory(llama, [[1] * 250], n_mem=8)


def test_evaluate_memory(fitted):
    lm, fit = fitted
    res = evaluate_memory(lm, fit)
    assert [(e["row"], e["seed"], e["n_tokens"]) for e in res] == [(0, 0, 9), (1, 1, 9), (2, 0, 2), (3, 1, 2)]
    h = pt.lm_cross_entropy(lm, [r.token_ids for r in fit.rows])
    for e, r, h_lm in zip(res, fit.rows, h, strict=True):
        assert r.accuracy == 1.0
        assert e["exact"] and e["accuracy"] == 1.0 and e["c_tokens"] == r.n_tokens and e["tf_accuracy"] == 1.0
        assert e["h_lm_nats"] == pytest.approx(h_lm)
        assert e["ce_with_mem_nats"] == pytest.approx(r.loss * r.n_tokens, rel=1e-4)  # the kept state's loss
        assert e["info_gain_nats"] == pytest.approx(e["h_lm_nats"] - e["ce_with_mem_nats"])
        assert e["info_gain_nats"] > 0
    one = evaluate_memory(lm, fit, rows=[2])[0]
    assert one.keys() == res[2].keys()
    assert all(one[k] == pytest.approx(v, rel=1e-5) for k, v in res[2].items())


def test_save_load_round_trip(fitted, tmp_path):
    lm, fit = fitted
    path = fit.save(tmp_path / "m.safetensors")
    back = MemoryFit.load(path)
    assert torch.equal(back.mem, fit.mem)
    for a, b in zip(back.rows, fit.rows, strict=True):
        assert (a.token_ids, a.seed, a.accuracy, a.correct, a.steps, a.loss, a.status, a.text) == \
               (b.token_ids, b.seed, b.accuracy, b.correct, b.steps, b.loss, b.status, b.text)
    assert (back.model_name, back.fingerprint) == ("tiny-random-llama", lm.fingerprint)
    assert back.recipe == TINY_RECIPE.to_dict() and back.version == pt.__version__
    assert lm.decode(decode_memory(lm, back, 0)) == "Hi there!"
    with safe_open(str(path), "pt") as f:
        head = json.loads(f.metadata()["prototokens"])
        assert set(f.keys()) == {"mem", "target_ids"}
    assert head["format"] == "prototokens-memory/1" and head["n_mem"] == 1
    assert back.bos_id == fit.bos_id == lm.bos_id and head["bos_id"] == lm.bos_id
    assert back.dtype == head["dtype"] == "fp32"


def test_files_from_before_bos_decode_without_it(llama, tmp_path):
    # a file written before `bos_id` existed holds a fit made without BOS: it loads as bos_id None
    ids = llama.encode("Hi there!")
    fit = fit_memory(llama, [ids], recipe=TINY_RECIPE, bos=False)
    path = fit.save(tmp_path / "old.safetensors")
    with safe_open(str(path), "pt") as f:
        meta, tensors = f.metadata(), {k: f.get_tensor(k) for k in f.keys()}
    head = json.loads(meta["prototokens"])
    del head["bos_id"]
    save_file(tensors, str(path), metadata={**meta, "prototokens": json.dumps(head)})
    back = MemoryFit.load(path)
    assert back.bos_id is None and decode_memory(llama, back) == ids


def test_foreign_files_are_refused(fitted, tmp_path):
    lm, fit = fitted
    with pytest.raises(pt.PrototokensError, match="no such file"):
        MemoryFit.load(tmp_path / "nope.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(pt.PrototokensError, match="not a readable safetensors"):
        MemoryFit.load(tmp_path / "junk.safetensors")
    save_file({"x": torch.zeros(2)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(pt.PrototokensError, match="not a prototokens memory fit"):
        MemoryFit.load(tmp_path / "plain.safetensors")
    protos = pt.fit_token_ids(lm, [lm.encode("Hi")], recipe=TINY_RECIPE.replace(max_steps=0))
    with pytest.raises(pt.PrototokensError, match="holds proto-tokens"):
        MemoryFit.load(protos.save(tmp_path / "p.safetensors"))
    with pytest.raises(pt.PrototokensError, match="unsupported format"):
        pt.ProtoTokens.load(fit.save(tmp_path / "m.safetensors"))


def test_decoding_with_another_model_is_refused(fitted):
    _, fit = fitted
    qwen = _tiny("qwen2")
    with pytest.raises(pt.PrototokensError, match="fitted on 'tiny-random-llama'"):
        decode_memory(qwen, fit)
    with pytest.raises(pt.PrototokensError, match="fitted on 'tiny-random-llama'"):
        evaluate_memory(qwen, fit)


def test_default_recipe_is_kuratovs_embedding_scale_init(llama, monkeypatch):
    from prototokens import recipes
    from prototokens.engine import embedding_stats

    # the default recipe (kuratov), cut to 0 steps: the mem vectors are their start, at the embeddings' scale
    monkeypatch.setitem(recipes.RECIPES, "kuratov", recipes.RECIPES["kuratov"].replace(max_steps=0))
    fit = fit_memory(llama, [llama.encode("Hello there")], n_mem=2, seeds=3)
    assert fit.recipe["name"] == "kuratov" and fit.recipe["patience"] == 2000 and fit.recipe["lr"] == 0.01
    std = embedding_stats(llama)[1]
    assert 0.8 * std < fit.mem.std().item() < 1.2 * std and abs(std - 1.0) > 0.3  # not the paper's N(0, 1)


@pytest.mark.parametrize("recipe", ["recommended", TINY_RECIPE.replace(plateau_after=10),
                                    TINY_RECIPE.replace(schedule="cosine", decay_steps=100, phase_steps=50),
                                    TINY_RECIPE.replace(m_init_scale=3.0)])
def test_recipe_fields_the_baseline_lacks_are_refused(llama, recipe):
    with pytest.raises(pt.PrototokensError, match="does not support"):
        fit_memory(llama, [llama.encode("Hi")], recipe=recipe)
