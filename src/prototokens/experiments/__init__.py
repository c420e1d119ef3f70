"""Registered experiments: one declarative TOML sweep config per paper table or figure.

Each file is the full-scale setting (as in the paper, for a GPU); its `[cpu]` table overrides it
for a scaled-down run on a 2-core CPU. Figure 4 (throughput) is computed by the report from the
Table 3 and Figure 3 runs.
"""

from __future__ import annotations

import tomllib
from importlib import resources

from ..errors import PrototokensError
from ..sweep import SweepConfig

SCALES = ("full", "cpu")


def names() -> list[str]:
    return sorted(p.name.removesuffix(".toml") for p in resources.files(__package__).iterdir()
                  if p.name.endswith(".toml"))


def load(name: str, scale: str = "full") -> SweepConfig:
    """The SweepConfig of registered experiment `name` at `scale` (full or cpu)."""
    if name not in names():
        raise PrototokensError(f"unknown experiment {name!r}; known: {', '.join(names())}")
    if scale not in SCALES:
        raise PrototokensError(f"unknown scale {scale!r}; known: {', '.join(SCALES)}")
    data = tomllib.loads(resources.files(__package__).joinpath(f"{name}.toml").read_text())
    cpu = data.pop("cpu", {})
    if scale == "cpu":
        data.update(cpu)
        data["name"] = f"{data['name']}-cpu"
    return SweepConfig.from_dict(data)
