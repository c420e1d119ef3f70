"""The captured (torch.compile) fitting step equals the eager one."""

import torch

import prototokens as pt
from prototokens.engine import bucket

from .conftest import TINY_RECIPE


def test_buckets_are_powers_of_two():
    assert [bucket(n) for n in (1, 2, 3, 4, 5, 8, 9, 100)] == [1, 2, 4, 4, 8, 8, 16, 128]


def test_compiled_fit_matches_eager(llama):
    rec = TINY_RECIPE.replace(max_steps=25, stop_accuracy=2.0)  # fixed number of steps on both paths
    texts = ["Hello there", "abc", "xyz!"]  # 3 rows: the compiled path pads to a bucket of 4
    eager = pt.fit(llama, texts, recipe=rec)
    captured = pt.fit(llama, texts, recipe=rec, compile=True)
    assert torch.allclose(eager.e, captured.e, atol=2e-3)
    assert torch.allclose(eager.m, captured.m, atol=2e-3)
    assert [r.correct for r in eager.rows] == [r.correct for r in captured.rows]


def test_compiled_fit_converges_with_rows_leaving(llama):
    fit = pt.fit(llama, ["H", "Hi there!", "Yo"], recipe=TINY_RECIPE, compile=True)
    assert [r.accuracy for r in fit.rows] == [1.0, 1.0, 1.0]
    assert [pt.decode_text(llama, fit, i) for i in range(3)] == ["H", "Hi there!", "Yo"]
