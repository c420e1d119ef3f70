"""The fitting engine on tiny random models: arrangements, sharing, batching, stopping, failures."""

import json

import pytest
import torch

import prototokens as pt
from prototokens.engine import group_ids, init_vectors, unit_ids

from .conftest import SHORT, TINY_RECIPE


@pytest.mark.parametrize("arrangement", list(pt.ARRANGEMENTS))
def test_every_arrangement_fits_and_decodes_exactly(tiny_lm, arrangement):
    text = SHORT[arrangement]
    fit = pt.fit(tiny_lm, text, arrangement=arrangement, seeds=2, recipe=TINY_RECIPE)
    best = fit.rows[fit.best_row()]
    assert best.accuracy == 1.0, [r.accuracy for r in fit.rows]
    assert best.status == "converged"
    assert pt.decode_text(tiny_lm, fit) == text
    assert pt.decode(tiny_lm, fit) == tiny_lm.encode(text)


@pytest.mark.parametrize("share_e,share_m", [(1, 0), (1, 2), (2, 1), (1, 1)])
def test_sharing_modes_fit_exactly(tiny_lm, share_e, share_m):
    llama = tiny_lm  # every architecture
    # e groups of 2 must share a first token (the output at e predicts t1 from e alone)
    texts = ["Hi there!", "Hello you", "Yes, sir", "Yo, no way"]
    # one m for all rows is the hardest case: tiny gemma3 needs ~1100 steps (rows stop when done)
    fit = pt.fit(llama, texts, arrangement="e-m", recipe=TINY_RECIPE.replace(max_steps=1500),
                 share_e=share_e, share_m=share_m)
    n = len(texts)
    assert len(fit.e) == (n if share_e == 1 else n // share_e)
    assert len(fit.m) == (1 if share_m == 0 else n // share_m)
    assert [r.m_index for r in fit.rows] == group_ids(n, share_m)
    for i, t in enumerate(texts):
        assert fit.rows[i].accuracy == 1.0, (i, [r.accuracy for r in fit.rows])
        assert pt.decode_text(llama, fit, i) == t


def test_shared_e_needs_distinct_m(llama):
    # two rows share e; their own m tells them apart. Under [e][m]x(N-1) the output at e predicts
    # t1 from e alone, so texts sharing e must share their first token.
    fit = pt.fit(llama, ["Hi there!", "Hello you"], share_e=2, share_m=1, recipe=TINY_RECIPE.replace(max_steps=600))
    assert len(fit.e) == 1 and len(fit.m) == 2
    assert [r.accuracy for r in fit.rows] == [1.0, 1.0]
    assert [pt.decode_text(llama, fit, i) for i in range(2)] == ["Hi there!", "Hello you"]


def test_units_follow_sharing():
    assert unit_ids([0, 1, 2, 3], [0, 1, 2, 3]) == [0, 1, 2, 3]
    assert unit_ids([0, 1, 2, 3], [0, 0, 1, 1]) == [0, 0, 1, 1]
    assert unit_ids([0, 0, 1, 1], [0, 1, 1, 2]) == [0, 0, 0, 0]
    assert group_ids(5, 0) == [0] * 5
    assert group_ids(5, 2) == [0, 0, 1, 1, 2]


def test_texts_of_different_lengths_in_one_batch(llama):
    texts = ["Hi", "Hello there", "A much longer one!"]
    fit = pt.fit(llama, texts, recipe=TINY_RECIPE.replace(max_steps=600))
    assert [r.n_tokens for r in fit.rows] == [len(t.encode()) for t in texts]
    for i, t in enumerate(texts):
        assert fit.rows[i].accuracy == 1.0
        assert pt.decode_text(llama, fit, i) == t


def test_init_is_deterministic_per_text_and_seed(llama):
    a = init_vectors(llama, [([1, 2, 3], 0, "e"), ([4, 5], 1, "e")], TINY_RECIPE)
    b = init_vectors(llama, [([4, 5], 1, "e")], TINY_RECIPE)
    assert torch.equal(a[1], b[0])
    assert not torch.equal(a[0], a[1])
    c = init_vectors(llama, [([1, 2, 3], 0, "m")], TINY_RECIPE)
    assert not torch.equal(a[0], c[0])


@pytest.mark.parametrize("init", ["normal", "embedding", "tokens"])
def test_init_scales(llama, init):
    v = init_vectors(llama, [([i], 0, "e") for i in range(64)], TINY_RECIPE.replace(init=init))
    expected = 1.0 if init == "normal" else 0.2  # tiny models' embeddings are N(0, 0.2^2)
    assert v.std().item() == pytest.approx(expected, rel=0.2)


def test_m_init_scale_scales_only_m(llama):
    keys = [([i], 0, tag) for i in range(32) for tag in ("e", "m", "m/restart1", "mem0")]
    same = init_vectors(llama, keys, TINY_RECIPE.replace(init_scale=30.0))
    split = init_vectors(llama, keys, TINY_RECIPE.replace(init_scale=30.0, m_init_scale=3.0))
    is_m = torch.tensor([False, True, True, False] * 32)  # the tags above: m and a restart's m
    assert torch.equal(split[~is_m], same[~is_m])
    assert torch.allclose(split[is_m], same[is_m] / 10)
    # and a fit starts from them: zero steps leave the initial vectors in place
    fit = pt.fit(llama, ["Hello there"], recipe=TINY_RECIPE.replace(init_scale=30.0, m_init_scale=3.0, max_steps=0))
    assert fit.e.norm().item() == pytest.approx(10 * fit.m.norm().item(), rel=0.3)
    with pytest.raises(pt.PrototokensError, match="m_init_scale"):
        TINY_RECIPE.replace(m_init_scale=-1.0)


def test_fitting_is_deterministic(llama):
    rec = TINY_RECIPE.replace(max_steps=20, stop_accuracy=2.0)
    a = pt.fit(llama, ["Hello there"], recipe=rec)
    b = pt.fit(llama, ["Hello there"], recipe=rec)
    assert torch.equal(a.e, b.e) and torch.equal(a.m, b.m)
    assert [r.correct for r in a.rows] == [r.correct for r in b.rows]


def test_a_warm_start_begins_at_the_saved_vectors(llama):
    text = "Hello there, a text"
    first = pt.fit(llama, [text], recipe=TINY_RECIPE.replace(max_steps=6, stop_accuracy=2.0))
    assert 0 < first.rows[0].accuracy < 1
    # a rate too small to change any token: the best state is the starting one, found at step 0
    still = pt.fit(llama, [text], recipe=TINY_RECIPE.replace(lr=1e-12, max_steps=3), init_from=first)
    assert torch.equal(still.e, first.e) and torch.equal(still.m, first.m)
    assert still.rows[0].correct == first.rows[0].correct and still.rows[0].steps == 0
    cold = pt.fit(llama, [text], recipe=TINY_RECIPE.replace(lr=1e-12, max_steps=3))
    assert not torch.equal(cold.e, first.e)
    # a second phase goes on from there and never ends below its start
    second = pt.fit(llama, [text], recipe=TINY_RECIPE.replace(max_steps=300), init_from=first)
    assert second.rows[0].accuracy == 1.0


def test_a_warm_start_needs_the_same_model_and_vector_counts(llama):
    first = pt.fit(llama, ["Hi there"], recipe=TINY_RECIPE.replace(max_steps=2))
    with pytest.raises(pt.PrototokensError, match="needs 2 e and 2 m"):
        pt.fit(llama, ["Hi there"], seeds=2, recipe=TINY_RECIPE, init_from=first)
    other = pt.load_model("tiny-random-qwen2", device="cpu", dtype="fp32")
    with pytest.raises(pt.PrototokensError, match="fitted on 'tiny-random-llama'"):
        pt.fit(other, ["Hi there"], recipe=TINY_RECIPE, init_from=first)


def test_a_row_fits_the_same_alone_or_in_a_batch(llama):
    rec = TINY_RECIPE.replace(max_steps=15, stop_accuracy=2.0)  # never stop early: compare trajectories
    alone = pt.fit(llama, ["Hello there"], seeds=[3], recipe=rec)
    batch = pt.fit(llama, ["Other text!", "Hello there", "x"], seeds=[3], recipe=rec)
    assert torch.allclose(alone.e[0], batch.e[1], atol=1e-4)
    assert torch.allclose(alone.m[0], batch.m[1], atol=1e-4)
    assert alone.rows[0].correct == batch.rows[1].correct


def test_max_batch_splits_without_changing_results(llama):
    rec = TINY_RECIPE.replace(max_steps=15, stop_accuracy=2.0)
    whole = pt.fit(llama, ["one", "two", "three", "four"], recipe=rec)
    split = pt.fit(llama, ["one", "two", "three", "four"], recipe=rec, max_batch=1)
    assert torch.allclose(whole.e, split.e, atol=1e-4)
    assert [r.correct for r in whole.rows] == [r.correct for r in split.rows]


def test_weights_stay_bit_identical_and_never_get_gradients(llama):
    before = {k: v.clone() for k, v in llama.model.state_dict().items()}
    seen_grad = []
    hooks = [p.register_hook(lambda g: seen_grad.append(g)) for p in llama.model.parameters() if p.requires_grad]
    assert hooks == []  # nothing in the model requires grad at all
    fit = pt.fit(llama, ["Hello there", "abc"], seeds=2, share_m=0, recipe=TINY_RECIPE.replace(max_steps=50))
    assert fit.rows[0].steps > 0
    assert all(p.grad is None and not p.requires_grad for p in llama.model.parameters())
    after = llama.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert not llama.model.training


def test_early_stop_keeps_best_state_and_reports_steps(llama):
    fit = pt.fit(llama, ["Hi"], recipe=TINY_RECIPE.replace(max_steps=500))
    r = fit.rows[0]
    assert r.status == "converged" and r.accuracy == 1.0
    assert 0 < r.steps < 500
    # the kept state really is the converged one
    assert pt.decode(llama, fit) == r.token_ids


def test_finished_rows_leave_the_batch(llama, monkeypatch):
    sizes = []
    forward = llama.model.base_model.forward

    def spy(*a, **k):
        sizes.append(k["inputs_embeds"].shape[0])
        return forward(*a, **k)

    monkeypatch.setattr(llama.model.base_model, "forward", spy)
    fit = pt.fit(llama, ["H", "A much longer text to fit here"], recipe=TINY_RECIPE.replace(max_steps=40))
    assert fit.rows[0].status == "converged"
    assert sizes[0] == 2 and sizes[-1] == 1  # the short text converged and left


def test_patience_stops_a_stalled_row(llama):
    rec = TINY_RECIPE.replace(lr=1e-6, max_steps=200, patience=5)
    fit = pt.fit(llama, ["A text that cannot be learnt at this rate"], recipe=rec)
    assert fit.rows[0].status == "patience"


def record_first_inputs(lm: pt.FrozenLM, monkeypatch) -> list[torch.Tensor]:
    """A list that gets the first row's input at position 0 (its `e`) on every forward pass."""
    starts = []
    forward = lm.model.base_model.forward

    def spy(*a, **k):
        starts.append(k["inputs_embeds"][0, 0].detach().float().clone())
        return forward(*a, **k)

    monkeypatch.setattr(lm.model.base_model, "forward", spy)
    return starts


def test_restarts_reinitialise_a_stalled_row(llama, monkeypatch):
    starts = record_first_inputs(llama, monkeypatch)
    rec = TINY_RECIPE.replace(lr=1e-6, max_steps=40, restarts=2, restart_after=5)
    fit = pt.fit(llama, ["A text that cannot be learnt at this rate"], recipe=rec)
    r = fit.rows[0]
    assert r.restarts == 2 and r.status == "max_steps"
    # at lr 1e-6 e hardly moves, so each restart shows as one jump to a fresh vector
    jumps = sum(bool((b - a).norm() > 1e-2) for a, b in zip(starts, starts[1:], strict=False))
    assert jumps == 2


def test_a_converging_row_is_never_restarted(llama):
    rec = TINY_RECIPE.replace(max_steps=500, restarts=3, restart_after=400)
    r = pt.fit(llama, ["Hi"], recipe=rec).rows[0]
    assert r.status == "converged" and r.restarts == 0


def stalled_row_moves(lm: pt.FrozenLM, monkeypatch, **plateau) -> list[float]:
    """How far `e` moves at each step of a 30-step fit that stalls from step 0 (lr 1e-3), with
    the rate cut 10x after every 5 steps without improvement, plus the `plateau` overrides."""
    starts = record_first_inputs(lm, monkeypatch)
    rec = TINY_RECIPE.replace(lr=1e-3, max_steps=30, plateau_after=5, plateau_factor=0.1, **plateau)
    pt.fit(lm, ["A text that cannot be learnt at this rate"], recipe=rec, check_every=1)
    return [float((b - a).norm()) for a, b in zip(starts, starts[1:], strict=False)]


def test_plateau_decay_shrinks_a_stalled_rows_steps(llama, monkeypatch):
    moves = stalled_row_moves(llama, monkeypatch)
    # accuracy never improves after step 0, so the rate falls 10x at steps 5, 10, 15, 20 and 25
    assert min(moves[:5]) > 0
    assert max(moves[-4:]) < 1e-3 * min(moves[:5])


def test_plateau_min_is_the_floor_of_the_cuts(llama, monkeypatch):
    moves = stalled_row_moves(llama, monkeypatch, plateau_min=0.1)
    # the same stall as above, but the rate stops at lr / 10 after the first cut instead of falling
    # 10x four more times: the last steps are about a tenth of the first, not a ten-thousandth
    assert 1e-2 * min(moves[:5]) < max(moves[-4:]) < 0.5 * min(moves[:5])


def test_plateau_cycle_restores_the_full_rate_after_its_cuts(llama, monkeypatch):
    moves = stalled_row_moves(llama, monkeypatch, plateau_cycle=2)
    # two 10x cuts (steps 5-15), then the third stall resets the rate: steps 16-20 move as far as
    # the first five, and the cuts begin again, so the last steps are 100x shorter once more
    first, reset, last = min(moves[:5]), moves[16:21], moves[-4:]
    assert max(moves[11:16]) < 0.02 * first
    assert all(0.5 * first < m < 2 * first for m in reset)
    assert max(last) < 0.02 * first


def test_plateau_factor_one_changes_nothing(llama):
    texts = ["Hello there", "Yo"]
    plain = pt.fit(llama, texts, recipe=TINY_RECIPE.replace(max_steps=40))
    same = pt.fit(llama, texts, recipe=TINY_RECIPE.replace(max_steps=40, plateau_after=1, plateau_factor=1.0))
    assert torch.allclose(plain.e, same.e, atol=1e-6) and torch.allclose(plain.m, same.m, atol=1e-6)


def test_plateau_decay_is_per_fit(llama):
    """A row's rate falls only when it stalls itself: alone or beside a stalling row, it is the same."""
    # here the long text first stalls at step 30, "Hello" at 32, and "Hello" is exact at step 66
    rec = TINY_RECIPE.replace(max_steps=80, plateau_after=12)
    alone = pt.fit(llama, ["Hello"], recipe=rec, check_every=1)
    beside = pt.fit(llama, ["Hello", "A much longer text, which stalls now and then on its way to the end"],
                    recipe=rec, check_every=1)
    assert alone.rows[0].status == "converged"
    assert beside.rows[0].steps == alone.rows[0].steps
    assert torch.allclose(beside.e[0], alone.e[0], atol=1e-3)  # batching changes only rounding


def test_focal_loss_weights_each_token_by_its_error(llama):
    from prototokens.engine import assemble_inputs, chunked_token_losses, forward_hidden, row_losses

    g = torch.Generator().manual_seed(0)
    E = torch.randn(2, llama.hidden_size, generator=g)
    slots = torch.tensor([[0, 1, 1, 1], [0, 1, 1, 1]])
    targets = torch.tensor([[5, 6, 7, 8], [9, 10, 11, -100]])
    n = torch.tensor([4.0, 3.0])
    loc = torch.tensor([0, 1])
    with torch.no_grad():
        ce, _ = chunked_token_losses(llama, forward_hidden(llama, assemble_inputs(E[loc], E[loc], slots)), targets)
        plain, _ = row_losses(llama, E, E, loc, loc, slots, targets, n)
        focal, _ = row_losses(llama, E, E, loc, loc, slots, targets, n, 2.0)
    torch.testing.assert_close(plain, ce.sum(1) / n)
    torch.testing.assert_close(focal, (ce * (1 - torch.exp(-ce)) ** 2).sum(1) / n)
    assert bool((focal < plain).all())


def test_nonfinite_loss_fails_only_that_row(llama, monkeypatch):
    calls = {"n": 0}
    layer = llama.model.model.layers[0]

    def poison(module, args, output):  # NaN into batch row 0 on the very first forward only
        calls["n"] += 1
        if calls["n"] == 1:
            hidden = output[0] if isinstance(output, tuple) else output
            hidden[0] = float("nan")
        return output

    handle = layer.register_forward_hook(poison)
    try:
        fit = pt.fit(llama, ["Hi there!", "Good day"], recipe=TINY_RECIPE)
    finally:
        handle.remove()
    assert fit.rows[0].status == "failed: non-finite loss"
    assert fit.rows[1].status == "converged" and fit.rows[1].accuracy == 1.0
    assert torch.isfinite(fit.e).all()


def test_out_of_memory_splits_the_batch(llama, monkeypatch):
    forward = llama.model.base_model.forward

    def small_memory(*a, **k):
        if k["inputs_embeds"].shape[0] > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (simulated)")
        return forward(*a, **k)

    monkeypatch.setattr(llama.model.base_model, "forward", small_memory)
    fit = pt.fit(llama, ["Hi", "Yo", "Ok"], recipe=TINY_RECIPE)
    assert [r.accuracy for r in fit.rows] == [1.0, 1.0, 1.0]


def test_out_of_memory_on_one_shared_unit_is_a_clear_error(llama, monkeypatch):
    def no_memory(*a, **k):
        raise torch.OutOfMemoryError("CUDA out of memory (simulated)")

    monkeypatch.setattr(llama.model.base_model, "forward", no_memory)
    with pytest.raises(pt.PrototokensError, match="out of memory"):
        pt.fit(llama, ["Hi", "Yo"], share_m=0, recipe=TINY_RECIPE)


def test_bf16_model_with_fp32_prototokens():
    lm = pt.load_model("tiny-random-llama", device="cpu", dtype="bf16")
    assert lm.dtype == torch.bfloat16
    fit = pt.fit(lm, "Hi!", recipe=TINY_RECIPE)
    assert fit.e.dtype == torch.float32
    assert fit.rows[0].accuracy == 1.0


def test_recipe_dict_leaves_out_later_fields_at_their_defaults():
    # sweep units and cached fits are keyed by this dict: adding plateau_* must not change old keys
    later = {"plateau_after", "plateau_factor", "plateau_min", "plateau_cycle", "decay_steps", "phase_steps",
             "phase_lr", "phase_weight_decay", "m_init_scale"}
    assert not later & pt.Recipe().to_dict().keys()
    r = pt.Recipe(plateau_after=50, plateau_factor=0.25, plateau_min=0.125, plateau_cycle=4)
    d = r.to_dict()
    assert d["plateau_after"] == 50 and d["plateau_factor"] == 0.25 and d["plateau_min"] == 0.125
    assert d["plateau_cycle"] == 4
    assert pt.Recipe.from_dict(d) == r and pt.Recipe.from_dict(pt.Recipe().to_dict()) == pt.Recipe()


def test_recommended_is_the_constant_rate_recipe_plus_the_step_cut_only():
    # docs/recipe.md compares them as "recommended-constant + plateau_after 50"; any other difference
    # would make that comparison (and the GPU capacity runs that check it) confounded
    const = pt.get_recipe("recommended-constant").to_dict()
    for name in ("recommended", "recommended-plateau"):
        rec = pt.get_recipe(name).to_dict()
        diff = {k for k in rec.keys() | const.keys() if rec.get(k) != const.get(k)}
        assert diff == {"name", "plateau_after"} and rec["plateau_after"] == 50
    assert pt.get_recipe().name == "recommended"
    assert pt.recipes.same_recipe_as({**const, "name": "recommended"}) == "recommended-constant"
    assert pt.recipes.same_recipe_as({**const, "lr": 0.2}) is None


def test_recommended_cosine_is_the_constant_rate_recipe_decayed_over_5000_steps():
    # the N = 128 comparison of docs/recipe.md: the same recipe, cosine over the 5000-step budget
    # after 10 warm-up steps
    const, cos = pt.get_recipe("recommended-constant"), pt.get_recipe("recommended-cosine")
    assert cos == const.replace(name="recommended-cosine", schedule="cosine", warmup_steps=10, decay_steps=5000)
    assert cos.max_steps == 5000 and cos.lr_at(9) == pytest.approx(0.3)
    assert cos.lr_at(300) > 0.99 * 0.3  # short fits see an almost constant rate
    assert cos.lr_at(2505) == pytest.approx(0.15) and cos.lr_at(4999) < 1e-6
    assert pt.recipes.same_recipe_as(cos.to_dict()) == "recommended-cosine"
    # the decay does not follow the budget, so a shorter budget cuts the same fit short
    short = pt.get_recipe("recommended-cosine", max_steps=300)
    assert [short.lr_at(s) for s in range(300)] == [cos.lr_at(s) for s in range(300)]


def test_recommended_cosine_nowd_is_recommended_cosine_without_weight_decay():
    cos, nowd = pt.get_recipe("recommended-cosine"), pt.get_recipe("recommended-cosine-nowd")
    assert cos.weight_decay == 0.01 and nowd == cos.replace(name="recommended-cosine-nowd", weight_decay=0.0)
    assert pt.recipes.same_recipe_as(nowd.to_dict()) == "recommended-cosine-nowd"


def test_recommended_cosine_b999_is_recommended_cosine_with_the_usual_beta2():
    cos, b999 = pt.get_recipe("recommended-cosine"), pt.get_recipe("recommended-cosine-b999")
    assert cos.betas == (0.9, 0.9) and b999 == cos.replace(name="recommended-cosine-b999", betas=(0.9, 0.999))
    assert pt.recipes.same_recipe_as(b999.to_dict()) == "recommended-cosine-b999"


def test_recommended_cosine_b999_x3_is_b999_from_a_tenth_of_the_init():
    b999, x3 = pt.get_recipe("recommended-cosine-b999"), pt.get_recipe("recommended-cosine-b999-x3")
    assert b999.init_scale == 30.0 and x3 == b999.replace(name="recommended-cosine-b999-x3", init_scale=3.0)
    assert pt.recipes.same_recipe_as(x3.to_dict()) == "recommended-cosine-b999-x3"


def test_phase_schedule():
    r = pt.Recipe(lr=1.0, schedule="cosine", warmup_steps=2, decay_steps=20, phase_steps=10, phase_lr=0.5,
                  phase_weight_decay=0.0, max_steps=40)
    assert [r.phase_at(s) for s in (0, 19, 20, 29, 30, 39)] == [0, 0, 1, 1, 2, 2]
    assert [s for s in range(40) if r.phase_starts(s)] == [20, 30]
    # each phase is the schedule of a fit of phase_steps steps at phase_lr
    alone = pt.Recipe(lr=0.5, schedule="cosine", warmup_steps=2, decay_steps=10, max_steps=10)
    assert [r.lr_at(20 + t) for t in range(10)] == [alone.lr_at(t) for t in range(10)]
    assert [r.lr_at(30 + t) for t in range(10)] == [alone.lr_at(t) for t in range(10)]
    assert [r.lr_at(s) for s in range(20)] == [r.replace(phase_steps=None).lr_at(s) for s in range(20)]
    assert [r.weight_decay_at(s) for s in (19, 20, 39)] == [0.01, 0.0, 0.0]
    assert r.replace(phase_lr=None).lr_at(25) == pytest.approx(0.1 * r.lr_at(25) / 0.5)  # lr / 10
    assert r.replace(phase_weight_decay=None).weight_decay_at(25) == 0.01
    assert pt.Recipe().weight_decay_at(4999) == 0.01 and pt.Recipe().phase_at(10**6) == 0


def test_phases_are_fits_warm_started_from_the_best_state(llama):
    # one fit with two phases against three fits, each warm-started from the one before: same vectors
    text = "Hello there, a longer text to fit"
    ids = [llama.encode(text)]
    main = TINY_RECIPE.replace(schedule="cosine", warmup_steps=2, decay_steps=12, max_steps=12, stop_accuracy=2.0)
    phased = main.replace(phase_steps=6, phase_lr=0.05, phase_weight_decay=0.0, max_steps=24)
    whole = pt.fit_token_ids(llama, ids, recipe=phased)
    phase = main.replace(lr=0.05, weight_decay=0.0, decay_steps=6, max_steps=6)
    step = pt.fit_token_ids(llama, ids, recipe=main)
    for _ in range(2):
        step = pt.fit_token_ids(llama, ids, recipe=phase, init_from=step)
    assert torch.equal(whole.e, step.e) and torch.equal(whole.m, step.m)
    assert whole.rows[0].correct == step.rows[0].correct
    # and the phases did something: without them the same budget ends elsewhere
    flat = pt.fit_token_ids(llama, ids, recipe=phased.replace(phase_steps=None, decay_steps=24))
    assert not torch.equal(flat.e, whole.e)


def test_a_phase_restores_the_best_state_and_a_fresh_optimiser(llama, monkeypatch):
    from prototokens import engine

    seen = []
    real = engine._Run.start_phase

    def spy(run, step):
        real(run, step)
        seen.append((step, torch.equal(run.E.detach(), run.best_e[run.e_ids]), len(run.opt.state)))

    monkeypatch.setattr(engine._Run, "start_phase", spy)
    rec = TINY_RECIPE.replace(schedule="cosine", warmup_steps=1, decay_steps=5, phase_steps=3, max_steps=11,
                              stop_accuracy=2.0)
    pt.fit_token_ids(llama, [llama.encode("phases")], recipe=rec)
    assert seen == [(5, True, 0), (8, True, 0)]


def test_recommended_phases_is_recommended_cosine_b999_then_low_rate_phases():
    b999, phases = pt.get_recipe("recommended-cosine-b999"), pt.get_recipe("recommended-phases")
    assert phases == b999.replace(name="recommended-phases", max_steps=7400, phase_steps=800, phase_lr=0.03,
                                  phase_weight_decay=0.0)
    assert [s for s in range(phases.max_steps) if phases.phase_starts(s)] == [5000, 5800, 6600]
    assert pt.recipes.same_recipe_as(phases.to_dict()) == "recommended-phases"


def test_weight_decay_and_betas_reach_the_optimiser(llama, monkeypatch):
    seen = []
    adamw = torch.optim.AdamW

    class Spy(adamw):
        def __init__(self, params, **kw):
            seen.append((kw["weight_decay"], tuple(kw["betas"])))
            super().__init__(params, **kw)

    monkeypatch.setattr(torch.optim, "AdamW", Spy)
    for name in ("recommended-cosine", "recommended-cosine-nowd"):
        pt.fit_token_ids(llama, [llama.encode("decay")], recipe=pt.get_recipe(name, max_steps=2))
    slow = pt.get_recipe("recommended-cosine-b999", max_steps=2)
    pt.fit_token_ids(llama, [llama.encode("decay")], recipe=slow)
    assert seen == [(0.01, (0.9, 0.9)), (0.0, (0.9, 0.9)), (0.01, (0.9, 0.999))]
    assert pt.Recipe.from_dict(json.loads(json.dumps(slow.to_dict()))) == slow  # as a sweep stores it
    assert pt.get_recipe("paper", betas=[0.9, 0.999]).betas == (0.9, 0.999)  # as a TOML config gives it


def test_decay_steps_fixes_the_schedule_whatever_the_budget():
    r = pt.Recipe(lr=1.0, max_steps=1000, schedule="linear", decay_steps=100)
    assert r.lr_at(50) == pytest.approx(0.5) and r.lr_at(100) == 0.0 and r.lr_at(999) == 0.0
    assert r.replace(max_steps=40).lr_at(39) == r.lr_at(39)
    assert pt.Recipe(lr=1.0, max_steps=100, schedule="linear").lr_at(50) == pytest.approx(0.5)  # default: the budget
    assert pt.Recipe(lr=1.0, schedule="cosine", decay_steps=100, min_lr_ratio=0.1).lr_at(500) == pytest.approx(0.1)
    assert pt.Recipe.from_dict(r.to_dict()) == r and r.to_dict()["decay_steps"] == 100


def test_lr_schedules():
    r = pt.Recipe(lr=1.0, max_steps=100, schedule="cosine", warmup_steps=10)
    assert r.lr_at(0) == pytest.approx(0.1)
    assert r.lr_at(10) == pytest.approx(1.0)
    assert r.lr_at(100) == pytest.approx(0.0, abs=1e-9)
    assert pt.Recipe(lr=1.0, max_steps=100, schedule="linear").lr_at(50) == pytest.approx(0.5)
    assert pt.Recipe().lr_at(4999) == 0.01


@pytest.mark.parametrize("bad", [dict(init="zeros"), dict(schedule="step"), dict(max_steps=-1), dict(lr=0),
                                 dict(restarts=2), dict(restarts=-1), dict(restarts=1, restart_after=0),
                                 dict(focal_gamma=-1.0), dict(plateau_after=0), dict(plateau_factor=0.0),
                                 dict(plateau_factor=1.5), dict(plateau_min=-0.1), dict(plateau_min=2.0),
                                 dict(plateau_cycle=0, plateau_after=5), dict(plateau_cycle=3),
                                 dict(warmup_steps=-1), dict(decay_steps=0), dict(warmup_steps=10, decay_steps=10),
                                 dict(bogus=1), dict(lr="fast"), dict(betas=(0.9, 1.0)), dict(betas=(0.9,)),
                                 dict(betas="fast"), dict(betas=0.9), dict(weight_decay=-0.1),
                                 dict(phase_steps=100), dict(schedule="cosine", decay_steps=50, phase_steps=10,
                                                             warmup_steps=10),
                                 dict(schedule="cosine", decay_steps=50, phase_steps=5, warmup_steps=10),
                                 dict(decay_steps=50, phase_steps=20), dict(phase_lr=0.0),
                                 dict(phase_weight_decay=-1.0)])
def test_bad_recipe_values(bad):
    with pytest.raises(pt.PrototokensError):
        pt.get_recipe("paper", **bad)


@pytest.mark.parametrize("chunk_tokens", [1, 7, 10_000])
def test_chunked_losses_equal_full_logits(tiny_lm, chunk_tokens):
    from prototokens.engine import chunked_token_losses, forward_hidden, forward_logits, token_losses

    torch.manual_seed(0)
    x = torch.randn(3, 9, tiny_lm.hidden_size, requires_grad=True)
    targets = torch.randint(0, 200, (3, 9))
    targets[1, 5:] = -100
    full_loss, full_correct = token_losses(forward_logits(tiny_lm, x), targets)
    (gx_full,) = torch.autograd.grad(full_loss.sum(), x)
    loss, correct = chunked_token_losses(tiny_lm, forward_hidden(tiny_lm, x), targets, chunk_tokens=chunk_tokens)
    (gx,) = torch.autograd.grad(loss.sum(), x)
    assert torch.allclose(loss, full_loss, atol=1e-5)
    assert torch.equal(correct, full_correct)
    assert torch.allclose(gx, gx_full, atol=1e-5)


def test_a_text_with_no_tokens_is_refused(llama):
    with pytest.raises(pt.PrototokensError, match="tokenises to no tokens"):
        pt.fit_token_ids(llama, [[1, 2], []])
    with pytest.raises(pt.PrototokensError, match="no texts"):
        pt.fit_token_ids(llama, [])


def test_rows_that_fit_keeps_a_margin():
    from prototokens.engine import auto_max_batch, rows_that_fit

    assert rows_that_fit(1000, 100) == 8
    assert rows_that_fit(1000, 100, safety=1.0) == 10
    assert rows_that_fit(10, 100) == 1  # always at least one row
    assert auto_max_batch(pt.load_model("tiny-random-llama", device="cpu"), 16) is None  # no limit on the CPU
