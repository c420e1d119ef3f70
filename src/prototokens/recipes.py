"""Optimisation recipes: how proto-tokens are initialised and trained.

`recommended` (the default: the paper's optimiser with a x30 init, lr 0.3, focal loss gamma 2, and
the rate halved on each 50-step stall) reaches far larger capacity on SmolLM2-135M than `paper`
(docs/recipe.md). `paper` is the recipe of
Mezentsev & Oseledets (AdamW lr 0.01, betas (0.9, 0.9), weight decay 0.01, N(0, 1) init, 5000 steps,
stop at 100% token accuracy), kept for faithful reproduction.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

from .errors import PrototokensError

INITS = ("normal", "embedding", "tokens")
SCHEDULES = ("constant", "cosine", "linear")
# fields added after stored results existed, with their defaults (see Recipe.to_dict)
_LATER_FIELDS = {"plateau_after": None, "plateau_factor": 0.5, "plateau_min": 0.0, "plateau_cycle": None,
                 "decay_steps": None, "phase_steps": None, "phase_lr": None, "phase_weight_decay": None,
                 "m_init_scale": None}


@dataclass(frozen=True)
class Recipe:
    """Hyper-parameters of one fit.

    init:
        ``normal``: N(0, init_scale^2) in every coordinate (the paper: scale 1);
        ``embedding``: N(0, (init_scale * s)^2) with s the std of the model's input embeddings;
        ``tokens``: the input embedding of a random vocabulary token, times init_scale.
    m_init_scale: the scale of the ``m`` vectors' init, where it differs from ``init_scale`` (None: the
        same). ``e`` (and the baseline's ``[mem]`` vectors) always take ``init_scale``.
    schedule: learning-rate schedule after ``warmup_steps`` of linear warm-up.
    decay_steps: the step at which ``schedule``'s decay ends (None: ``max_steps``, the budget). A fixed
        value makes the rate at each step, hence every fit, independent of the step budget; past it
        the rate stays at ``lr * min_lr_ratio``.
    patience: stop a fit when its best accuracy has not improved for this many steps.
    restarts / restart_after: re-initialise a fit (fresh vectors from a new seed, fresh Adam state)
        when its current attempt has not improved for ``restart_after`` steps, at most ``restarts``
        times; the best state over all attempts is kept and the step budget is shared.
    focal_gamma: loss shaping; each token's cross-entropy is weighted by (1 - p)^gamma (focal loss),
        so tokens already right weigh little and the last wrong ones dominate (0 = plain mean CE).
    plateau_after / plateau_factor: per-fit step decay on a stall; a fit whose accuracy has not
        improved for ``plateau_after`` steps has its learning rate multiplied by ``plateau_factor``
        (again after each further ``plateau_after`` steps without improvement), on top of
        ``schedule``. Unlike a schedule, it does not depend on the step budget, and it acts on the
        stalled fits only, leaving the others in a batch at full rate.
    plateau_min: the floor of those cuts; a fit's multiplier is never cut below it (0: no floor),
        so a fit that has stalled for good keeps moving at ``lr * plateau_min`` instead of freezing.
    plateau_cycle: a warm restart of the rate; once a fit's rate has been cut this many times, its
        next stall resets it to the full rate (keeping the vectors and Adam's moments) and the cuts
        begin again (None: never).
    phase_steps / phase_lr / phase_weight_decay: low-rate phases after the main decay (None: none). From
        ``decay_steps`` on, the budget is cut into phases of ``phase_steps``; each starts every fit
        again from its best state so far with a fresh Adam state, and runs ``schedule`` (with
        ``warmup_steps`` of warm-up) from ``phase_lr`` (default ``lr / 10``) down over the phase, with
        weight decay ``phase_weight_decay`` (default ``weight_decay``). A phase is exactly a new fit
        warm-started (``init_from``) from the best state of the one before.
    """

    name: str = "paper"
    lr: float = 0.01
    betas: tuple[float, float] = (0.9, 0.9)
    weight_decay: float = 0.01
    max_steps: int = 5000
    init: str = "normal"
    init_scale: float = 1.0
    schedule: str = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    patience: int | None = None
    stop_accuracy: float = 1.0
    restarts: int = 0
    restart_after: int | None = None
    focal_gamma: float = 0.0
    plateau_after: int | None = None
    plateau_factor: float = 0.5
    plateau_min: float = 0.0
    plateau_cycle: int | None = None
    decay_steps: int | None = None
    phase_steps: int | None = None
    phase_lr: float | None = None
    phase_weight_decay: float | None = None
    m_init_scale: float | None = None
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:  # a TOML or JSON config gives a list
            object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        except (TypeError, ValueError):
            raise PrototokensError(f"betas must be two numbers, got {self.betas!r}") from None
        if len(self.betas) != 2 or not all(0 <= b < 1 for b in self.betas):
            raise PrototokensError(f"betas must be two numbers in [0, 1), got {list(self.betas)}")
        if self.init not in INITS:
            raise PrototokensError(f"unknown init {self.init!r}; known: {', '.join(INITS)}")
        if self.schedule not in SCHEDULES:
            raise PrototokensError(f"unknown schedule {self.schedule!r}; known: {', '.join(SCHEDULES)}")
        if self.max_steps < 0:
            raise PrototokensError(f"steps must be >= 0, got {self.max_steps}")
        if not self.lr > 0:
            raise PrototokensError(f"learning rate must be > 0, got {self.lr}")
        if self.patience is not None and self.patience < 1:
            raise PrototokensError(f"patience must be >= 1, got {self.patience}")
        if self.restarts < 0:
            raise PrototokensError(f"restarts must be >= 0, got {self.restarts}")
        if self.restarts and (self.restart_after is None or self.restart_after < 1):
            raise PrototokensError("restarts need restart_after >= 1 (steps without improvement before a restart)")
        if self.focal_gamma < 0:
            raise PrototokensError(f"focal_gamma must be >= 0, got {self.focal_gamma}")
        if self.plateau_after is not None and self.plateau_after < 1:
            raise PrototokensError(f"plateau_after must be >= 1, got {self.plateau_after}")
        if not 0 < self.plateau_factor <= 1:
            raise PrototokensError(f"plateau_factor must be in (0, 1], got {self.plateau_factor}")
        if not 0 <= self.plateau_min <= 1:
            raise PrototokensError(f"plateau_min must be in [0, 1], got {self.plateau_min}")
        if self.plateau_cycle is not None and self.plateau_cycle < 1:
            raise PrototokensError(f"plateau_cycle must be >= 1, got {self.plateau_cycle}")
        if self.plateau_cycle is not None and self.plateau_after is None:
            raise PrototokensError("plateau_cycle needs plateau_after (the stall that cuts the rate)")
        if self.warmup_steps < 0:
            raise PrototokensError(f"warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.decay_steps is not None and self.decay_steps <= self.warmup_steps:
            raise PrototokensError(f"decay_steps must be > warmup_steps ({self.warmup_steps}), got {self.decay_steps}")
        if self.phase_steps is not None:
            if self.decay_steps is None:
                raise PrototokensError("phase_steps needs decay_steps (the step at which the phases begin)")
            if self.phase_steps <= self.warmup_steps:
                raise PrototokensError(f"phase_steps must be > warmup_steps ({self.warmup_steps}), got {self.phase_steps}")
            if self.schedule == "constant":
                raise PrototokensError("phase_steps needs a decaying schedule (cosine or linear)")
        if self.phase_lr is not None and not self.phase_lr > 0:
            raise PrototokensError(f"phase_lr must be > 0, got {self.phase_lr}")
        if self.phase_weight_decay is not None and self.phase_weight_decay < 0:
            raise PrototokensError(f"phase_weight_decay must be >= 0, got {self.phase_weight_decay}")
        if self.m_init_scale is not None and self.m_init_scale < 0:
            raise PrototokensError(f"m_init_scale must be >= 0, got {self.m_init_scale}")
        if self.weight_decay < 0:
            raise PrototokensError(f"weight_decay must be >= 0, got {self.weight_decay}")

    @property
    def decay_end(self) -> int:
        """The step at which the schedule's decay ends: ``decay_steps``, else the step budget."""
        return self.max_steps if self.decay_steps is None else self.decay_steps

    def phase_at(self, step: int) -> int:
        """0 in the main fit, k >= 1 in the k-th low-rate phase (``phase_steps``)."""
        if self.phase_steps is None or step < self.decay_end:
            return 0
        return 1 + (step - self.decay_end) // self.phase_steps

    def _phase_step(self, step: int) -> int:
        """Steps since the current low-rate phase began (only meaningful when ``phase_at(step)``)."""
        return (step - self.decay_end) % self.phase_steps

    def phase_starts(self, step: int) -> bool:
        """Whether a low-rate phase begins at optimiser step `step`."""
        return self.phase_at(step) > 0 and self._phase_step(step) == 0

    def lr_at(self, step: int) -> float:
        """Learning rate for optimiser step `step` (0-based)."""
        if self.phase_at(step):
            lr = self.lr / 10 if self.phase_lr is None else self.phase_lr
            return self._scheduled(lr, self._phase_step(step), self.phase_steps)
        return self._scheduled(self.lr, step, self.decay_end)

    def weight_decay_at(self, step: int) -> float:
        """AdamW's weight decay at optimiser step `step`."""
        if self.phase_at(step) and self.phase_weight_decay is not None:
            return self.phase_weight_decay
        return self.weight_decay

    def _scheduled(self, lr: float, step: int, end: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return lr * (step + 1) / self.warmup_steps
        if self.schedule == "constant":
            return lr
        span = max(1, end - self.warmup_steps)
        frac = min(1.0, (step - self.warmup_steps) / span)
        if self.schedule == "cosine":
            mult = 0.5 * (1 + math.cos(math.pi * frac))
        else:
            mult = 1 - frac
        return lr * (self.min_lr_ratio + (1 - self.min_lr_ratio) * mult)

    def replace(self, **changes) -> Recipe:
        """A copy with `changes`; an unknown field or a value of the wrong type is a PrototokensError."""
        known = [f.name for f in dataclasses.fields(self)]
        unknown = [k for k in changes if k not in known]
        if unknown:
            raise PrototokensError(f"unknown recipe field(s) {', '.join(unknown)}; known: {', '.join(known)}")
        try:
            return dataclasses.replace(self, **changes)
        except TypeError as e:  # e.g. lr = "fast": the checks in __post_init__ compare it with numbers
            raise PrototokensError(f"a recipe field has a value of the wrong type ({e})") from None

    def to_dict(self) -> dict:
        """The fields as JSON values; fields added after results were first stored are left out at
        their defaults, so the identities of stored sweep units and cached fits do not change."""
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        for k, default in _LATER_FIELDS.items():
            if d[k] == default:
                del d[k]
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Recipe:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


# The former default: the best of the N = 32 ablations (4/4 Gutenberg texts exact on SmolLM2-135M,
# median 188.5 steps), capacity 32-45 tokens per text where `paper` reaches 0-5 (docs/recipe.md).
_CONSTANT = Recipe(name="recommended-constant", init_scale=30.0, lr=0.3, focal_gamma=2.0)
_COSINE = _CONSTANT.replace(name="recommended-cosine", schedule="cosine", warmup_steps=10, decay_steps=5000)
_B999 = _COSINE.replace(name="recommended-cosine-b999", betas=(0.9, 0.999))

RECIPES: dict[str, Recipe] = {
    "paper": Recipe(),
    # The default (docs/recipe.md, "The `recommended` recipe"): `recommended-constant` with its rate
    # halved after each 50 steps without improvement; capacity 45-90 tokens per text where
    # `recommended-constant` reaches 32-45, and more texts fitted wherever a constant rate stalls.
    "recommended": _CONSTANT.replace(name="recommended", plateau_after=50),
    # What `recommended` meant until 2026-11-24; run directories of that time that name
    # `recommended` are reported under this name.
    "recommended-constant": _CONSTANT,
    # The same fields as `recommended`, under the name it was measured by as a candidate.
    "recommended-plateau": _CONSTANT.replace(name="recommended-plateau", plateau_after=50),
    # A candidate for the 5000-step budget of the capacity targets: `recommended-constant` with a
    # cosine decay over 5000 steps (10 warm-up steps), whatever the budget. At N = 128 it held 127/128
    # tokens of a text where `recommended` froze at 90/128, and at N = 64 it fitted 4/4 texts where
    # `recommended` fits 3/4, 3-4x more slowly; with one `m` shared by 4 texts at N = 32 it fitted 1/4 in
    # 2000 steps where `recommended` fits 4/4 by step 562 (docs/recipe.md). Short fits see an almost
    # constant rate.
    "recommended-cosine": _COSINE,
    # A candidate (docs/recipe.md, "Weight decay"): `recommended-cosine` without AdamW's weight decay. At
    # lr 0.3 the paper's decay of 0.01 shrinks the vectors by 0.3% a step, from the x30 init's norm of
    # about 760 (Gemma-3-270M) to 30-50 in every fit of 45 tokens or more. Without it N = 45 fits much
    # sooner (Gemma: 659 steps instead of 2200; SmolLM2: 4/4 texts, median 320, instead of 3/4), but
    # N = 32 is a little slower and Gemma's N = 181 ended lower (118/181 against 161).
    "recommended-cosine-nowd": _COSINE.replace(name="recommended-cosine-nowd", weight_decay=0.0),
    # A candidate (docs/recipe.md, "Adam's beta2"): `recommended-cosine` with AdamW's usual beta2 of 0.999
    # instead of the paper's 0.9. On SmolLM2 (4 texts, own m) it fitted N = 45 4/4 (median 369 steps,
    # where `recommended-cosine` fits 3/4) and N = 64 4/4 at steps 427-2160 instead of 2113-3315; N = 32
    # a little slower (median 223 against 199). Gemma-3-270M, 1 text: N = 45 at step 1467 instead of 2200.
    "recommended-cosine-b999": _B999,
    # A candidate for long texts (docs/recipe.md, "Adam's beta2"): `recommended-cosine-b999` from a 10x smaller
    # init (x3: a norm near the one the decay settles at, so the first ~1500 steps fit instead of shrinking).
    # Gemma-3-270M, 6 texts at N = 181: 4 fitted by step 3644 (180-181 of 181), 2 left at 178 and 179, where the
    # x30 init ends at 161-167 (texts 0 and 1). SmolLM2, 4 texts:
    # N = 32 1/4 in 300 steps and N = 45 2/4 in 1500 (x30: 4/4 and 4/4), the misses mostly with the first
    # token wrong: not for short fits.
    "recommended-cosine-b999-x3": _B999.replace(name="recommended-cosine-b999-x3", init_scale=3.0),
    # A candidate beyond the 5000-step budget (docs/recipe.md, "Low-rate phases in one fit"): `recommended-cosine-b999`,
    # then three 800-step phases at lr 0.03 without weight decay, each from the best state so far with a
    # fresh Adam state. The path that fitted a Gemma-3-270M text at N = 181 exactly (there with phases of
    # 1000, 500 and 800 steps, run as separate warm-started fits) after the 5000-step fit had stopped at 164.
    # On a second text, as defined here, it stopped at 178/181 (167 after the decay): not fitted. With
    # init_scale=3 its schedule fitted all 6 Gemma texts tried at N = 181 (180 of 181 by steps 2949-5405; on
    # texts 0-2 run by hand as the x3 fit and, on texts 1 and 2, its first phase).
    "recommended-phases": _B999.replace(name="recommended-phases", max_steps=7400, phase_steps=800, phase_lr=0.03,
                                        phase_weight_decay=0.0),
    # Provisional (docs/recipe.md): a 10x larger init keeps position 0 out of the model's attention-
    # sink regime, where its output hardly depends on the input and the first token is never learnt.
    "large-init": Recipe(name="large-init", init_scale=10.0, lr=0.1),
    # The [mem] baseline as Kuratov et al. train it: the paper's optimiser, mem vectors drawn at the
    # scale of the input embeddings (as the RMT MemoryCell their wrapper builds on does), and a stop
    # after 2000 steps without improvement.
    "kuratov": Recipe(name="kuratov", init="embedding", patience=2000),
}
DEFAULT_RECIPE = "recommended"


def same_recipe_as(fields: dict, overrides: dict | None = None) -> str | None:
    """The name of the recipe that, with `overrides`, has these fields (their own name aside)."""
    for name in RECIPES:
        mine = get_recipe(name, **(overrides or {})).replace(name=fields.get("name", "")).to_dict()
        if mine == fields:
            return name
    return None


def get_recipe(recipe: str | Recipe | None = None, **overrides) -> Recipe:
    """A named recipe (or a Recipe), with fields overridden where the value is not None."""
    if recipe is None:
        recipe = DEFAULT_RECIPE
    if isinstance(recipe, str):
        if recipe not in RECIPES:
            raise PrototokensError(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
        recipe = RECIPES[recipe]
    changes = {k: v for k, v in overrides.items() if v is not None}
    return recipe.replace(**changes) if changes else recipe
