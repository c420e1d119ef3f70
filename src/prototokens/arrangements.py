"""The five input layouts of the paper's Table 1.

An arrangement says, for a text of N target tokens, which trained vector (`e` or `m`) sits at
each input position, and how many leading outputs are left untrained. Output position
``n_skip + i`` is trained to predict target token ``t_{i+1}`` (i = 0..N-1).

| name       | notation          | inputs | output at position 0 |
|------------|-------------------|--------|----------------------|
| `e-m`      | `[e][m]x(N-1)`    | N      | predicts t1 (the paper's Eq. 1, default) |
| `e-m-plus` | `[e][m]xN`        | N+1    | not trained; m copies predict t1..tN |
| `e`        | `[e]xN`           | N      | predicts t1 |
| `e-then-m` | `[e]x(N/2)[m]x(N/2)` | N   | predicts t1 (first ceil(N/2) inputs are e) |
| `e-m-alt`  | `[e,m]x(N/2)`     | N      | predicts t1 (e, m, e, m, ...) |
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .errors import PrototokensError

E, M = 0, 1  # slot codes


@dataclass(frozen=True)
class Arrangement:
    """One input layout: which vector stands at each position, and the untrained lead."""

    name: str
    notation: str
    n_skip: int
    description: str

    def length(self, n_tokens: int) -> int:
        """Number of input positions for a text of `n_tokens` targets."""
        return n_tokens + self.n_skip

    def slots(self, n_tokens: int) -> list[int]:
        """Slot code (0 = e, 1 = m) of each input position."""
        n = n_tokens
        if self.name == "e-m":
            return [E] + [M] * (n - 1)
        if self.name == "e-m-plus":
            return [E] + [M] * n
        if self.name == "e":
            return [E] * n
        if self.name == "e-then-m":
            half = math.ceil(n / 2)
            return [E] * half + [M] * (n - half)
        if self.name == "e-m-alt":
            return [E if i % 2 == 0 else M for i in range(n)]
        raise AssertionError(self.name)

    @property
    def uses_m(self) -> bool:
        return self.name != "e"


ARRANGEMENTS: dict[str, Arrangement] = {
    a.name: a
    for a in [
        Arrangement("e-m", "[e][m]x(N-1)", 0, "N inputs; the output at e predicts t1 (paper Eq. 1)"),
        Arrangement("e-m-plus", "[e][m]xN", 1, "N+1 inputs; output at e untrained, m copies predict t1..tN"),
        Arrangement("e", "[e]xN", 0, "e repeated N times"),
        Arrangement("e-then-m", "[e]x(N/2)[m]x(N/2)", 0, "first half e, second half m"),
        Arrangement("e-m-alt", "[e,m]x(N/2)", 0, "e and m alternating"),
    ]
}
DEFAULT_ARRANGEMENT = "e-m"


def _normalise(s: str) -> str:
    return s.replace(" ", "").replace("×", "x").replace("*", "x").lower()


def get_arrangement(name: str | Arrangement) -> Arrangement:
    """Look an arrangement up by its short name or by its paper notation."""
    if isinstance(name, Arrangement):
        return name
    key = _normalise(name)
    for a in ARRANGEMENTS.values():
        if key in (a.name, _normalise(a.notation)):
            return a
    known = ", ".join(f"{a.name} ({a.notation})" for a in ARRANGEMENTS.values())
    raise PrototokensError(f"unknown arrangement {name!r}; known: {known}")
