"""Fitted proto-tokens as a safetensors artefact with a self-describing header.

One file holds one fit call: the distinct `e` vectors, the distinct `m` vectors (a shared `m` is
stored once and referenced by every row through `m_index`), the target token ids, and a JSON
header (model name and fingerprint, arrangement, sharing, recipe, per-row seed, accuracy,
steps, status, library version).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as safetensors_bytes

from . import __version__
from .errors import PrototokensError
from .files import write_atomic

FORMAT = "prototokens/1"


def target_ids_tensor(rows: list[FittedRow]) -> torch.Tensor:
    """(R, N_max) target token ids, padded with -1."""
    ids = torch.full((len(rows), max(r.n_tokens for r in rows)), -1, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :r.n_tokens] = torch.tensor(r.token_ids, dtype=torch.long)
    return ids


def write_artefact(path: str | Path, tensors: dict[str, torch.Tensor], header: dict) -> Path:
    """Write safetensors with `header` as JSON in the metadata, atomically (never a half-written file)."""
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise PrototokensError(f"output directory does not exist: {path.parent}")
    # safetensors' own save_file creates 0600 files; write_atomic goes through open(), which honours the umask
    return write_atomic(path, safetensors_bytes(tensors, metadata={"prototokens": json.dumps(header)}))


@dataclass
class FittedRow:
    """One fitted text (as token ids) and seed, with its metrics at the best state."""

    token_ids: list[int]
    seed: int
    accuracy: float = 0.0
    correct: list[bool] = field(default_factory=list)
    steps: int = 0
    loss: float = float("nan")
    status: str = "pending"
    text: str | None = None

    @property
    def n_tokens(self) -> int:
        return len(self.token_ids)

    def summary(self) -> dict:
        d = asdict(self)
        d["n_tokens"] = self.n_tokens
        d["correct"] = "".join("1" if c else "0" for c in self.correct)
        return d


@dataclass
class RowResult(FittedRow):
    """A proto-token row: also which e and m vectors it uses, and its C_tokens."""

    e_index: int = 0
    m_index: int = 0
    c_tokens: int = 0
    restarts: int = 0


@dataclass
class ProtoTokens:
    """The result of one fit: vectors `e` (n_e, d), `m` (n_m, d) and one RowResult per row."""

    e: torch.Tensor
    m: torch.Tensor
    rows: list[RowResult]
    arrangement: str
    model_name: str
    fingerprint: str
    recipe: dict
    sharing: dict
    seconds: float = 0.0
    version: str = __version__
    # the model's dtype during the fit ("fp32", "bf16", "fp16"): decoding in another one changes
    # tokens (docs/recipe.md, "Precision"); None in files written before it was recorded
    dtype: str | None = None

    def best_row(self) -> int:
        """Index of the most accurate row (the first on ties)."""
        return max(range(len(self.rows)), key=lambda i: (self.rows[i].accuracy, -i))

    def vectors(self, row: int) -> tuple[torch.Tensor, torch.Tensor]:
        r = self.rows[row]
        return self.e[r.e_index], self.m[r.m_index]

    def header(self) -> dict:
        return {
            "format": FORMAT,
            "version": self.version,
            "model": self.model_name,
            "fingerprint": self.fingerprint,
            "arrangement": self.arrangement,
            "sharing": self.sharing,
            "recipe": self.recipe,
            "seconds": self.seconds,
            "dtype": self.dtype,
            "rows": [r.summary() for r in self.rows],
        }

    def save(self, path: str | Path) -> Path:
        """Write the artefact as safetensors; the JSON header sits in the file's metadata."""
        return write_artefact(path, {
            "e": self.e.detach().float().cpu().contiguous(),
            "m": self.m.detach().float().cpu().contiguous(),
            "e_index": torch.tensor([r.e_index for r in self.rows], dtype=torch.long),
            "m_index": torch.tensor([r.m_index for r in self.rows], dtype=torch.long),
            "target_ids": target_ids_tensor(self.rows),
        }, self.header())

    @classmethod
    def load(cls, path: str | Path) -> ProtoTokens:
        """Read an artefact written by `save`; a clear error for anything else."""
        path = Path(path)
        if not path.is_file():
            raise PrototokensError(f"no such file: {path}")
        try:
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
        except (SafetensorError, OSError, ValueError) as e:
            raise PrototokensError(f"{path} is not a readable safetensors file ({str(e).splitlines()[0]})") from None
        if "prototokens" not in meta:
            raise PrototokensError(f"{path} is a safetensors file but not a prototokens artefact")
        try:
            head = json.loads(meta["prototokens"])
            if head.get("format") != FORMAT:
                raise PrototokensError(f"{path} has unsupported format {head.get('format')!r}")
            rows = []
            for i, r in enumerate(head["rows"]):
                n = r["n_tokens"]
                ids = tensors["target_ids"][i, :n].tolist()
                if ids != r["token_ids"]:
                    raise PrototokensError(f"{path} is corrupt: target ids of row {i} disagree with its header")
                rows.append(RowResult(
                    token_ids=ids, seed=r["seed"], e_index=r["e_index"], m_index=r["m_index"],
                    accuracy=r["accuracy"], c_tokens=r["c_tokens"], correct=[c == "1" for c in r["correct"]],
                    steps=r["steps"], loss=r["loss"], status=r["status"], text=r.get("text"),
                    restarts=r.get("restarts", 0),
                ))
            return cls(e=tensors["e"], m=tensors["m"], rows=rows, arrangement=head["arrangement"],
                       model_name=head["model"], fingerprint=head["fingerprint"], recipe=head["recipe"],
                       sharing=head["sharing"], seconds=head.get("seconds", 0.0), version=head["version"],
                       dtype=head.get("dtype"))
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise PrototokensError(f"{path} has a damaged prototokens header ({e})") from None
