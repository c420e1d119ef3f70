import functools
import os

import pytest
import torch

import prototokens as pt
from prototokens.tiny import TINY_ARCHS

ARCHS = [a for a in TINY_ARCHS if a != "gemma"]  # the five the issue names; gemma is an extra
# Tiny random models fit with a larger step than the paper's 0.01 (they are far from real LMs).
TINY_RECIPE = pt.get_recipe("paper", lr=0.1, max_steps=300)
# Per arrangement, a text short enough to be fitted exactly (cf. the paper's Table 1: [e]xN only
# at N=1, [e]x(N/2)[m]x(N/2) at N<=2, [e,m]x(N/2) at N<=4).
SHORT = {"e-m": "Hi there!", "e-m-plus": "Hi there!", "e": "H", "e-then-m": "Hi", "e-m-alt": "Hi!?"}


@functools.cache
def _tiny(arch: str) -> pt.FrozenLM:
    return pt.load_model(f"tiny-random-{arch}", device="cpu", dtype="fp32")


@pytest.fixture(params=ARCHS)
def tiny_lm(request) -> pt.FrozenLM:
    return _tiny(request.param)


@pytest.fixture
def llama() -> pt.FrozenLM:
    return _tiny("llama")


@pytest.fixture(autouse=True)
def _threads():
    torch.set_num_threads(int(os.environ.get("PROTOTOKENS_TEST_THREADS", "2")))
