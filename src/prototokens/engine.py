"""The fitting engine: many texts and seeds optimised together against one frozen model.

Each row (a text and a seed) has its own `e`, or shares one within groups of `share_e` rows;
likewise `m` within groups of `share_m` rows (0 = all rows share one). Rows linked by a shared
vector form a *unit*: a unit stops together (all its rows at the stop accuracy, patience run
out, or a non-finite loss), its best state is kept, and its rows then leave the active batch.

The per-row loss is the mean cross-entropy over that row's N targets, and the batch loss is
the sum over rows, so a row's gradient (and, AdamW being element-wise, its whole trajectory)
does not depend on which other rows share the batch. Texts of different lengths are right-
padded: under a causal mask real positions never attend to padding, so no mask is needed.
"""

from __future__ import annotations

import hashlib
import weakref
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint
from tqdm.auto import tqdm

from .arrangements import Arrangement, E, M, get_arrangement
from .artefacts import ProtoTokens, RowResult
from .errors import PrototokensError
from .loading import FrozenLM, check_model, dtype_name
from .recipes import Recipe, get_recipe
from .snapshots import FitProgress, Snapshots, fit_identity, load_loop_state


def row_seed(token_ids: list[int], seed: int, tag: str) -> int:
    """A 63-bit seed that depends only on the text's tokens, the user seed and the vector kind."""
    h = hashlib.sha256(f"{tag}:{seed}:".encode() + bytes(str(token_ids), "ascii"))
    return int.from_bytes(h.digest()[:8], "little") >> 1


def group_ids(n_rows: int, size: int) -> list[int]:
    """Group index of each row for groups of `size` consecutive rows (0 = one group for all)."""
    if size < 0:
        raise PrototokensError(f"group size must be >= 0, got {size}")
    size = n_rows if size == 0 else size
    return [r // size for r in range(n_rows)]


def unit_ids(e_of_row: list[int], m_of_row: list[int]) -> list[int]:
    """Connected components of rows linked by a shared e or m (union-find)."""
    parent = list(range(len(e_of_row)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for groups in (e_of_row, m_of_row):
        first: dict[int, int] = {}
        for r, g in enumerate(groups):
            if g in first:
                parent[find(r)] = find(first[g])
            else:
                first[g] = r
    roots: dict[int, int] = {}
    return [roots.setdefault(find(r), len(roots)) for r in range(len(e_of_row))]


@torch.no_grad()
def embedding_stats(lm: FrozenLM, sample: int = 8192) -> tuple[torch.Tensor, float]:
    """A strided sample of the model's actual input vectors (after any embedding scaling) and their std."""
    emb = lm.model.get_input_embeddings()
    vocab = emb.weight.shape[0]
    ids = torch.arange(0, vocab, max(1, vocab // sample), device=lm.device)
    vecs = emb(ids).float()
    return vecs.cpu(), vecs.std().item()


def init_vectors(lm: FrozenLM, keys: list[tuple[list[int], int, str]], recipe: Recipe) -> torch.Tensor:
    """One initial fp32 vector per key (token ids, seed, tag), drawn from a generator seeded by the key.

    Keys tagged ``m`` (or ``m/...``, a restart's) are scaled by the recipe's ``m_init_scale`` where it
    is set, all others by ``init_scale``.
    """
    d = lm.hidden_size
    out = torch.empty(len(keys), d)
    table, std = embedding_stats(lm) if recipe.init != "normal" else (None, 1.0)
    for i, (ids, seed, tag) in enumerate(keys):
        g = torch.Generator().manual_seed(row_seed(ids, seed, tag))
        if recipe.init == "tokens":
            out[i] = table[torch.randint(len(table), (1,), generator=g)].squeeze(0)
        else:
            out[i] = torch.randn(d, generator=g) * std
        is_m = tag.split("/")[0] == "m" and recipe.m_init_scale is not None
        out[i] *= recipe.m_init_scale if is_m else recipe.init_scale
    return out


@dataclass
class _Problem:
    """The static description of a batch of rows (on the device)."""

    slots: torch.Tensor  # (R, L) long: 0 = e, 1 = m
    targets: torch.Tensor  # (R, L) long, -100 where untrained
    n_tokens: torch.Tensor  # (R,) float


def _problem(rows: list[RowResult], arr: Arrangement, device: torch.device) -> _Problem:
    width = max(arr.length(r.n_tokens) for r in rows)
    pad = M if arr.uses_m else E
    slots = torch.full((len(rows), width), pad, dtype=torch.long)
    targets = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, r in enumerate(rows):
        length = arr.length(r.n_tokens)
        slots[i, :length] = torch.tensor(arr.slots(r.n_tokens))
        targets[i, arr.n_skip:length] = torch.tensor(r.token_ids)
    # one extra inert row (nothing trained) pads a batch up to its compiled bucket size
    slots = torch.cat([slots, torch.full((1, width), E, dtype=torch.long)])
    targets = torch.cat([targets, torch.full((1, width), -100, dtype=torch.long)])
    n = torch.tensor([float(r.n_tokens) for r in rows] + [1.0])
    return _Problem(slots.to(device), targets.to(device), n.to(device))


def assemble_inputs(e: torch.Tensor, m: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
    """(R, L, d) input embeddings: row r takes e[r] where slots is 0 and m[r] where it is 1."""
    return torch.where((slots == E).unsqueeze(-1), e.unsqueeze(1), m.unsqueeze(1))


def forward_logits(lm: FrozenLM, inputs: torch.Tensor) -> torch.Tensor:
    return lm.model(inputs_embeds=inputs.to(lm.dtype), use_cache=False).logits


def token_losses(logits: torch.Tensor, targets: torch.Tensor,
                 softcap: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy (R, L) and correctness (R, L) against `targets` (-100 = ignore)."""
    logits = logits.float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=-100,
                           reduction="none").view(targets.shape)
    return loss, logits.argmax(-1) == targets


def _head_losses(h: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 softcap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    return token_losses(F.linear(h, weight, bias), targets, softcap)


def chunked_token_losses(lm: FrozenLM, hidden: torch.Tensor, targets: torch.Tensor,
                         chunk_tokens: int = 8192) -> tuple[torch.Tensor, torch.Tensor]:
    """`token_losses` of the LM head applied to `hidden` (R, L, d), a slice of positions at a time.

    Each slice's logits (and their fp32 copy) exist only inside the slice: under autograd the
    slice is checkpointed and its logits are recomputed in the backward pass, so the batch's
    full (R, L, V) logits are never held in memory.
    """
    head = lm.model.get_output_embeddings()
    softcap = getattr(lm.model.config, "final_logit_softcapping", None)
    step = max(1, chunk_tokens // max(1, hidden.shape[0]))
    losses, corrects = [], []
    for s in range(0, hidden.shape[1], step):
        args = (hidden[:, s:s + step], targets[:, s:s + step], head.weight, head.bias, softcap)
        if torch.is_grad_enabled():
            loss, correct = checkpoint(_head_losses, *args, use_reentrant=False)
        else:
            loss, correct = _head_losses(*args)
        losses.append(loss)
        corrects.append(correct)
    return torch.cat(losses, 1), torch.cat(corrects, 1)


def forward_hidden(lm: FrozenLM, inputs: torch.Tensor) -> torch.Tensor:
    """Final hidden states (after the last norm), i.e. what the LM head reads."""
    return lm.model.base_model(inputs_embeds=inputs.to(lm.dtype), use_cache=False).last_hidden_state


def row_losses(lm: FrozenLM, E: torch.Tensor, M: torch.Tensor, e_loc: torch.Tensor, m_loc: torch.Tensor,
               slots: torch.Tensor, targets: torch.Tensor, n_tokens: torch.Tensor,
               focal_gamma: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean cross-entropy of each row (R,) and per-position correctness (R, L): one forward pass.

    With focal_gamma > 0 each token's cross-entropy is weighted by (1 - p)^gamma first (focal loss).
    """
    inputs = assemble_inputs(E[e_loc], M[m_loc], slots)
    loss, correct = chunked_token_losses(lm, forward_hidden(lm, inputs), targets)
    if focal_gamma:
        loss = loss * (-torch.expm1(-loss)).clamp(min=0).pow(focal_gamma)
    return loss.sum(1) / n_tokens, correct


def bucket(n: int) -> int:
    """Batch sizes a captured step is compiled for: powers of two, so shrinking batches reuse graphs."""
    return 1 << max(0, (n - 1).bit_length())


def _slice_adam(opt: torch.optim.Optimizer, old: torch.nn.Parameter, new: torch.nn.Parameter,
                keep: torch.Tensor) -> None:
    state = opt.state.pop(old, None)
    if state:
        opt.state[new] = {k: (v[keep].clone() if k.startswith("exp_avg") else v) for k, v in state.items()}


class _Run:
    """Optimises one set of rows (global e/m/unit ids given) until every unit has stopped."""

    def __init__(self, lm: FrozenLM, rows: list[RowResult], units: list[int], e0: torch.Tensor,
                 m0: torch.Tensor, arr: Arrangement, recipe: Recipe, check_every: int, bar: tqdm | None,
                 loss_fn=row_losses, distributed: bool = False):
        self.lm, self.rows, self.arr, self.recipe, self.bar = lm, rows, arr, recipe, bar
        self.distributed = distributed  # one unit spread over all ranks: its m gradient is all-reduced
        self.loss_fn = loss_fn
        self.pad_to_bucket = loss_fn is not row_losses
        dev = lm.device
        self.check_every = check_every
        self.prob = _problem(rows, arr, dev)
        self.row_e = torch.tensor([r.e_index for r in rows], device=dev)
        self.row_m = torch.tensor([r.m_index for r in rows], device=dev)
        self.row_unit = torch.tensor(units, device=dev)
        n_units = max(units) + 1
        self.best_e, self.best_m = e0.to(dev).clone(), m0.to(dev).clone()
        self.best_acc = torch.full((n_units,), -1.0, device=dev)
        self.best_step = torch.zeros(n_units, dtype=torch.long, device=dev)
        self.bad = torch.zeros(n_units, dtype=torch.bool, device=dev)
        self.best_correct = torch.zeros_like(self.prob.targets[:len(rows)], dtype=torch.bool)
        self.best_loss = torch.full((len(rows),), float("nan"), device=dev)
        self.unit_size = torch.zeros(n_units, device=dev).index_add_(0, self.row_unit, torch.ones(len(rows), device=dev))
        if distributed:
            torch.distributed.all_reduce(self.unit_size)
            torch.distributed.broadcast(self.best_m, src=0)  # one m, the same start on every rank
        self.status = ["max_steps"] * n_units
        # the current attempt's best, for restarts (the overall best above is what is kept)
        self.try_acc = torch.full((n_units,), -1.0, device=dev)
        self.try_step = torch.zeros(n_units, dtype=torch.long, device=dev)
        self.restarts = [0] * n_units
        # per-unit learning-rate multiplier of recipe.plateau_after, and the step of its last decay
        self.lr_mult = torch.ones(n_units, device=dev)
        self.decay_step = torch.zeros(n_units, dtype=torch.long, device=dev)
        self.n_cuts = torch.zeros(n_units, dtype=torch.long, device=dev)  # since the last full rate
        self.active = torch.arange(len(rows), device=dev)
        self.e_ids = torch.unique(self.row_e)  # global ids of the active e / m vectors
        self.m_ids = torch.unique(self.row_m)
        # the unit of each vector (every row using a vector is in the same unit)
        self.e_unit = torch.zeros(len(e0), dtype=torch.long, device=dev).index_put_((self.row_e,), self.row_unit)
        self.m_unit = torch.zeros(len(m0), dtype=torch.long, device=dev).index_put_((self.row_m,), self.row_unit)
        self.E = torch.nn.Parameter(self.best_e[self.e_ids].clone())
        self.M = torch.nn.Parameter(self.best_m[self.m_ids].clone())
        self.opt = torch.optim.AdamW(self._optimised(), lr=recipe.lr, betas=recipe.betas,
                                     weight_decay=recipe.weight_decay)

    def _local(self, ids: torch.Tensor, active_ids: torch.Tensor) -> torch.Tensor:
        return torch.searchsorted(active_ids, ids)

    def step(self, step: int, update: bool) -> None:
        if update and self.recipe.phase_starts(step):
            self.start_phase(step)
        rows = self.active
        e_loc = self._local(self.row_e[rows], self.e_ids)
        m_loc = self._local(self.row_m[rows], self.m_ids)
        batch = rows
        if self.pad_to_bucket and bucket(len(rows)) > len(rows):
            extra = bucket(len(rows)) - len(rows)
            batch = torch.cat([rows, rows.new_full((extra,), len(self.rows))])  # the inert row
            e_loc = torch.cat([e_loc, e_loc.new_zeros(extra)])
            m_loc = torch.cat([m_loc, m_loc.new_zeros(extra)])
        with torch.set_grad_enabled(update):
            row_loss, correct = self.loss_fn(self.lm, self.E, self.M, e_loc, m_loc, self.prob.slots[batch],
                                             self.prob.targets[batch], self.prob.n_tokens[batch],
                                             self.recipe.focal_gamma)
            row_loss, correct = row_loss[:len(rows)], correct[:len(rows)]
            finite = torch.isfinite(row_loss)
        n = self.prob.n_tokens[rows]
        acc = correct.sum(1) / n
        units = self.row_unit[rows]
        size = self.unit_size
        acc_sum = torch.zeros_like(self.best_acc).index_add_(0, units, acc.detach())
        n_bad = torch.zeros_like(self.best_acc).index_add_(0, units, (~finite).float())
        if self.distributed:  # the unit's rows live on every rank: reduce its sums and sizes
            torch.distributed.all_reduce(acc_sum)
            torch.distributed.all_reduce(n_bad)
        unit_acc = acc_sum / size.clamp(min=1)
        self.bad |= n_bad > 0
        live = self._live_units()
        improved = live & ~self.bad & (unit_acc > self.best_acc)
        self.best_acc = torch.where(improved, unit_acc, self.best_acc)
        try_imp = live & ~self.bad & (unit_acc > self.try_acc)
        self.try_acc = torch.where(try_imp, unit_acc, self.try_acc)
        self.try_step = torch.where(try_imp, torch.full_like(self.try_step, step), self.try_step)
        self.best_step = torch.where(improved, torch.full_like(self.best_step, step), self.best_step)
        imp_row = improved[units].unsqueeze(-1)
        self.best_correct[rows] = torch.where(imp_row, correct, self.best_correct[rows])
        self.best_loss[rows] = torch.where(imp_row.squeeze(-1), row_loss.detach(), self.best_loss[rows])
        with torch.no_grad():
            imp_e = improved[self.e_unit[self.e_ids]].unsqueeze(-1)
            self.best_e[self.e_ids] = torch.where(imp_e, self.E.detach(), self.best_e[self.e_ids])
            imp_m = improved[self.m_unit[self.m_ids]].unsqueeze(-1)
            self.best_m[self.m_ids] = torch.where(imp_m, self.M.detach(), self.best_m[self.m_ids])
        show_progress(self.bar, step, self.check_every, acc, row_loss)
        if update:
            before = (self.E.detach().clone(), self.M.detach().clone()) if self.recipe.plateau_after else None
            optimiser_step(self.opt, self.recipe, step, row_loss, finite, (self.E, self.M), self._reduce_m)
            if before is not None:
                self._scale_updates(*before)

    def start_phase(self, step: int) -> None:
        """Begin a low-rate phase (recipe.phase_steps): score the current state, then put every fit
        back to its best state with a fresh Adam state, as a new fit warm-started from it would be."""
        self.step(step, update=False)
        with torch.no_grad():
            self.E.copy_(self.best_e[self.e_ids])
            self.M.copy_(self.best_m[self.m_ids])
        self.opt.state.clear()
        self.try_acc.fill_(-1.0)
        self.try_step.fill_(step)
        self.lr_mult.fill_(1.0)
        self.decay_step.fill_(step)
        self.n_cuts.zero_()

    def _scale_updates(self, e_old: torch.Tensor, m_old: torch.Tensor) -> None:
        # An AdamW update is linear in the learning rate, so scaling a vector's step by its unit's
        # multiplier is exactly a step taken at that unit's own rate.
        with torch.no_grad():
            for p, old, unit_of, ids in ((self.E, e_old, self.e_unit, self.e_ids), (self.M, m_old, self.m_unit, self.m_ids)):
                mult = self.lr_mult[unit_of[ids]].unsqueeze(-1).to(p.dtype)
                p.copy_(torch.where(mult == 1, p, old + mult * (p - old)))  # full-rate rows bit for bit

    def decay_stalled(self, step: int) -> None:
        """Multiply the learning rate of units whose accuracy has stalled by recipe.plateau_factor,
        down to recipe.plateau_min; after recipe.plateau_cycle cuts, reset it to the full rate."""
        r = self.recipe
        stall = self._stalled(step - torch.maximum(self.try_step, self.decay_step), r.plateau_after)
        reset = stall & (self.n_cuts >= r.plateau_cycle) if r.plateau_cycle else torch.zeros_like(stall)
        cut = (self.lr_mult * r.plateau_factor).clamp(min=r.plateau_min)
        self.lr_mult = torch.where(reset, torch.ones_like(cut), torch.where(stall, cut, self.lr_mult))
        self.n_cuts = torch.where(reset, torch.zeros_like(self.n_cuts), self.n_cuts + stall.long())
        self.decay_step = torch.where(stall, torch.full_like(self.decay_step, step), self.decay_step)

    def _stalled(self, since: torch.Tensor, after: int) -> torch.Tensor:
        """(n_units,) bool: live, unfinished units whose `since` (steps) has reached `after`."""
        return self._live_units() & ~self.bad & (self.best_acc < self.recipe.stop_accuracy) & (since >= after)

    def _live_units(self) -> torch.Tensor:
        """(n_units,) bool: the units with a row still in the active batch."""
        live = torch.zeros_like(self.bad)
        live[self.row_unit[self.active]] = True
        return live

    def _reduce_m(self) -> None:
        if self.distributed and self.M.grad is not None:
            torch.distributed.all_reduce(self.M.grad)  # sum over every rank's texts, as in one process

    def restart_stalled(self, step: int) -> None:
        """Re-initialise units whose current attempt has stalled (recipe.restarts / restart_after)."""
        r = self.recipe
        stall = self._stalled(step - self.try_step, r.restart_after)
        todo = [u for u in torch.nonzero(stall).flatten().tolist() if self.restarts[u] < r.restarts]
        for u in todo:
            self.restarts[u] += 1
            self.try_acc[u], self.try_step[u] = -1.0, step
            self.lr_mult[u], self.decay_step[u], self.n_cuts[u] = 1.0, step, 0
            for param, ids, row_of, unit_of, tag in ((self.E, self.e_ids, self.row_e, self.e_unit, "e"),
                                                      (self.M, self.m_ids, self.row_m, self.m_unit, "m")):
                loc = torch.nonzero(unit_of[ids] == u).flatten()
                if not len(loc):
                    continue
                first = [int(torch.nonzero(row_of == ids[i])[0]) for i in loc.tolist()]
                keys = [(self.rows[i].token_ids, self.rows[i].seed, f"{tag}/restart{self.restarts[u]}") for i in first]
                with torch.no_grad():
                    param[loc] = init_vectors(self.lm, keys, r).to(param.device)
                    for k, v in self.opt.state.get(param, {}).items():
                        if k.startswith("exp_avg"):
                            v[loc] = 0

    def finish_units(self, step: int, final: bool) -> bool:
        """Retire stopped units and compact the batch; return whether any row is still active."""
        if self.recipe.restarts and not final:
            self.restart_stalled(step)
        if self.recipe.plateau_after and not final:
            self.decay_stalled(step)
        units = self.row_unit[self.active]
        done = stopped(self.recipe, self.bad, self.best_acc, self.best_step, step, final)
        keep_row = ~done[units]
        if bool(keep_row.all()):
            return True
        for u in torch.unique(units[~keep_row]).tolist():
            self.status[u] = stop_status(self.recipe, bool(self.bad[u]), self.best_acc[u].item(), final) or self.status[u]
        self.active = self.active[keep_row]
        new_e = torch.unique(self.row_e[self.active])
        new_m = torch.unique(self.row_m[self.active])
        keep_e = torch.searchsorted(self.e_ids, new_e)
        keep_m = torch.searchsorted(self.m_ids, new_m)
        E = torch.nn.Parameter(self.E.detach()[keep_e].clone())
        Mp = torch.nn.Parameter(self.M.detach()[keep_m].clone())
        _slice_adam(self.opt, self.E, E, keep_e)
        _slice_adam(self.opt, self.M, Mp, keep_m)
        self.E, self.M, self.e_ids, self.m_ids = E, Mp, new_e, new_m
        self.opt.param_groups[0]["params"] = self._optimised()
        return len(self.active) > 0

    def _optimised(self) -> list[torch.nn.Parameter]:
        """The parameters the optimiser updates: e, and m if the arrangement uses it."""
        return [self.E, self.M] if self.arr.uses_m else [self.E]

    # what a snapshot keeps (snapshots.loop_state); the rest is fixed by the rows and the recipe
    _STATE = ("best_e", "best_m", "best_acc", "best_step", "bad", "best_correct", "best_loss", "try_acc",
              "try_step", "lr_mult", "decay_step", "n_cuts", "active", "e_ids", "m_ids")
    _LISTS = ("status", "restarts")
    _PARAMS = ("E", "M")

    def load_state(self, state: dict) -> int:
        """Take up a snapshot's state; return the step to continue from."""
        return load_loop_state(self, state, self.lm.device)

    def run(self, resume: dict | None = None, on_check=None) -> None:
        """Fit to the end, from step 0 or from a snapshot's state; on_check(next_step) after each stop check."""
        start = self.load_state(resume) if resume is not None else 0
        step_loop(self.step, self.finish_units, self.recipe.max_steps, self.check_every, self.bar, start, on_check)
        for i, r in enumerate(self.rows):
            u = int(self.row_unit[i])
            length = self.arr.length(r.n_tokens)
            correct = self.best_correct[i, self.arr.n_skip:length].tolist()
            r.correct = [bool(c) for c in correct]
            r.c_tokens = sum(r.correct)
            r.accuracy = r.c_tokens / r.n_tokens
            r.steps = int(self.best_step[u])
            r.loss = float(self.best_loss[i])
            r.status = self.status[u]
            r.restarts = self.restarts[u]


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled_row_losses(lm: FrozenLM):
    """`row_losses` captured by torch.compile for `lm` (CUDA graphs on a GPU), cached per model."""
    if lm.model not in _COMPILED:
        mode = "reduce-overhead" if lm.device.type == "cuda" else None
        _COMPILED[lm.model] = torch.compile(row_losses, mode=mode, dynamic=False)
    return _COMPILED[lm.model]


def show_progress(bar: tqdm | None, step: int, every: int, acc: torch.Tensor, row_loss: torch.Tensor) -> None:
    """Active rows, mean accuracy and loss on the progress bar (a host read, so only every `every` steps)."""
    if bar is not None and step % every == 0:
        bar.set_postfix(rows=len(acc), acc=f"{acc.mean().item():.3f}", loss=f"{row_loss.mean().item():.3f}",
                        refresh=False)


def optimiser_step(opt: torch.optim.Optimizer, recipe: Recipe, step: int, row_loss: torch.Tensor,
                   finite: torch.Tensor, params, after_backward=None) -> None:
    """One update on the sum of the finite row losses; non-finite gradient entries are zeroed."""
    for g in opt.param_groups:
        g["lr"] = recipe.lr_at(step)
        g["weight_decay"] = recipe.weight_decay_at(step)
    opt.zero_grad(set_to_none=True)
    torch.where(finite, row_loss, torch.zeros_like(row_loss)).sum().backward()
    if after_backward is not None:
        after_backward()
    for p in params:
        if p.grad is not None:
            torch.nan_to_num_(p.grad, nan=0.0, posinf=0.0, neginf=0.0)
    opt.step()


def rows_that_fit(free_bytes: int, bytes_per_row: float, safety: float = 0.8) -> int:
    """How many rows fit in `free_bytes` at `bytes_per_row`, keeping a safety margin (at least 1)."""
    return max(1, int(free_bytes * safety // max(1.0, bytes_per_row)))


def auto_max_batch(lm: FrozenLM, length: int, probe_rows: int = 4) -> int | None:
    """Rows per batch that fit in free GPU memory, from one probe step at `length` positions.

    None on the CPU (no limit; out-of-memory splitting still applies).
    """
    if lm.device.type != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    d = lm.hidden_size
    e = torch.zeros(probe_rows, d, device=lm.device, requires_grad=True)
    slots = torch.ones(probe_rows, length, dtype=torch.long, device=lm.device)
    targets = torch.zeros(probe_rows, length, dtype=torch.long, device=lm.device)
    n = torch.full((probe_rows,), float(length), device=lm.device)
    idx = torch.arange(probe_rows, device=lm.device)
    loss, _ = row_losses(lm, e, e, idx, idx, slots, targets, n)
    loss.sum().backward()
    torch.cuda.synchronize()
    per_row = (torch.cuda.max_memory_allocated() - base) / probe_rows
    del e, loss
    torch.cuda.empty_cache()
    return rows_that_fit(torch.cuda.mem_get_info()[0], per_row)


def stopped(recipe: Recipe, bad: torch.Tensor, best_acc: torch.Tensor, best_step: torch.Tensor, step: int,
            final: bool) -> torch.Tensor:
    """Which fits stop now: a non-finite loss, the stop accuracy reached, patience run out, or the last step."""
    if final:
        return torch.ones_like(bad)
    done = bad | (best_acc >= recipe.stop_accuracy)
    if recipe.patience is not None:
        done |= (step - best_step) >= recipe.patience
    return done


def stop_status(recipe: Recipe, bad: bool, best_acc: float, final: bool) -> str | None:
    """Why a stopped fit stopped (None: it ran to the last step, status stays 'max_steps')."""
    if bad:
        return "failed: non-finite loss"
    if best_acc >= recipe.stop_accuracy:
        return "converged"
    return None if final else "patience"


def step_loop(step, finish, max_steps: int, check_every: int, bar: tqdm | None, start: int = 0,
              on_check=None) -> None:
    """Steps start..max_steps (the last only evaluates), retiring finished rows every `check_every` steps.

    step(i, update) evaluates the current state (and updates it unless `update` is False);
    finish(i, final) retires stopped rows and returns whether any is still active;
    on_check(i + 1), if given, runs after each such check that leaves rows active.
    """
    if bar is not None:
        bar.reset(total=max_steps + 1)
        bar.update(start)
    for i in range(start, max_steps + 1):
        step(i, update=i < max_steps)
        if bar is not None:
            bar.update(1)
        if i == max_steps or (i + 1) % check_every == 0:
            if not finish(i, final=i == max_steps):
                break
            if on_check is not None:
                on_check(i + 1)


def warm_start(lm: FrozenLM, fit: ProtoTokens, n_e: int, n_m: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The fp32 `e` and `m` of a saved fit, checked against the model and the vector counts of a new fit."""
    check_model(lm, fit.model_name, fit.fingerprint, fit.e.shape[-1], what="starting vectors")
    if (len(fit.e), len(fit.m)) != (n_e, n_m):
        raise PrototokensError(f"the starting fit has {len(fit.e)} e and {len(fit.m)} m vectors; "
                               f"this fit needs {n_e} e and {n_m} m (same texts, seeds and sharing)")
    return fit.e.detach().float().cpu().clone(), fit.m.detach().float().cpu().clone()


def vectors_digest(e: torch.Tensor, m: torch.Tensor) -> str:
    """A short digest of starting vectors, so that a snapshot of a warm-started fit resumes only that fit."""
    h = hashlib.sha256()
    for t in (e, m):
        h.update(t.float().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def fit_token_ids(lm: FrozenLM, token_ids: list[list[int]], *, seeds: int | list[int] = 1,
                  arrangement: str | Arrangement = "e-m", recipe: str | Recipe | None = None,
                  share_e: int = 1, share_m: int = 1, max_batch: int | None = None,
                  check_every: int | None = None, progress: bool = False,
                  texts: list[str] | None = None, compile: bool = False,
                  distributed: bool = False, snapshots: Snapshots | None = None,
                  init_from: ProtoTokens | None = None) -> ProtoTokens:
    """Fit proto-tokens for every (text, seed) pair; rows are ordered text-major, seed-minor.

    share_e / share_m: rows per group sharing one e / m (1 = own vector, 0 = all rows share one).
    max_batch: at most this many rows optimised at once (whole sharing units are never split);
        default on a GPU: what fits in free memory, from a probe step (`auto_max_batch`).
    check_every: steps between reads of the stop bookkeeping (default 1 on CPU, 10 on GPU).
    compile: capture the forward/backward with torch.compile (CUDA graphs on a GPU), one graph
        per power-of-two batch size.
    distributed: this rank's share of texts that share ONE m with the other ranks' texts
        (share_m=0, share_e=1, torch.distributed initialised): m starts from rank 0's, its
        gradient is summed over ranks and the stop decision is global, as in a single process.
    snapshots: save the fit's state there as it goes, and resume from a snapshot already there
        (the same steps as an uninterrupted fit); the file is deleted when the fit returns.
    init_from: start from this saved fit's `e` and `m` instead of the recipe's initialisation (a
        warm start: e.g. a second phase under another recipe); it must come from the same model and
        hold as many `e` and `m` vectors as this fit has. The optimiser's state starts afresh.
    """
    arr = get_arrangement(arrangement)
    recipe = get_recipe(recipe)
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not token_ids:
        raise PrototokensError("no texts to fit")
    if not seed_list:
        raise PrototokensError("at least one seed is needed")
    limit = lm.max_positions
    for i, ids in enumerate(token_ids):
        if len(ids) == 0:
            raise PrototokensError(f"text {i} tokenises to no tokens")
        if limit is not None and arr.length(len(ids)) > limit:
            raise PrototokensError(f"text {i} needs {arr.length(len(ids))} positions ({len(ids)} tokens, "
                                   f"arrangement {arr.notation}) but {lm.name} has only {limit}")
    if distributed:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            raise PrototokensError("distributed=True needs an initialised torch.distributed process group")
        if share_m != 0 or share_e != 1 or len(seed_list) != 1:
            raise PrototokensError("distributed fitting shares one m over all ranks: use share_m=0, share_e=1, one seed")
        max_batch = None
        if snapshots is not None:
            raise PrototokensError("snapshots are not supported with distributed fitting")
    pairs = [(t, s) for t in range(len(token_ids)) for s in seed_list]
    e_of = group_ids(len(pairs), share_e)
    m_of = group_ids(len(pairs), share_m)
    units = unit_ids(e_of, m_of)
    first_e: dict[int, int] = {}
    first_m: dict[int, int] = {}
    for r, (g_e, g_m) in enumerate(zip(e_of, m_of, strict=True)):
        first_e.setdefault(g_e, r)
        first_m.setdefault(g_m, r)
    start = None
    if init_from is not None:
        e0, m0 = warm_start(lm, init_from, len(first_e), len(first_m))
        start = vectors_digest(e0, m0)
    else:
        e0 = init_vectors(lm, [(token_ids[pairs[r][0]], pairs[r][1], "e") for r in first_e.values()], recipe)
        m0 = init_vectors(lm, [(token_ids[pairs[r][0]], pairs[r][1], "m") for r in first_m.values()], recipe)
    rows = [RowResult(token_ids=list(token_ids[t]), seed=s, e_index=e_of[r], m_index=m_of[r],
                      text=texts[t] if texts else None) for r, (t, s) in enumerate(pairs)]
    if check_every is None:
        check_every = 1 if lm.device.type == "cpu" else 10
    if max_batch is None and not distributed:
        max_batch = auto_max_batch(lm, max(arr.length(len(t)) for t in token_ids))
    best_e, best_m = e0.clone(), m0.clone()
    splits = max_batch if max_batch is not None and max_batch < len(rows) else None
    tracker = FitProgress(snapshots, fit_identity(lm.fingerprint, token_ids, seed_list, arr.name, recipe.to_dict(),
                                                  share_e, share_m, splits, check_every,
                                                  *([start] if start else [])),
                          {"best_e": best_e, "best_m": best_m}, _RESULT_FIELDS)
    bar = tqdm(total=None, desc="fitting", unit="step", disable=not progress, leave=False, mininterval=0.5)

    def solve(unit_set: list[int]) -> None:
        idx = [r for r in range(len(rows)) if units[r] in unit_set]
        if max_batch is not None and len(idx) > max_batch and len(unit_set) > 1:
            half = len(unit_set) // 2
            solve(unit_set[:half])
            solve(unit_set[half:])
            return
        sub = [rows[r] for r in idx]
        key = ",".join(map(str, unit_set))
        if tracker.finished(key, sub):
            return
        local_units = [unit_set.index(units[r]) for r in idx]
        run = _Run(lm, sub, local_units, best_e, best_m, arr, recipe, check_every, bar if progress else None,
                   loss_fn=compiled_row_losses(lm) if compile else row_losses, distributed=distributed)
        try:
            run.run(tracker.resume(key), on_check=lambda i: tracker.checked(key, run, i))
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not _is_oom(e):
                raise
            del run
            if lm.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(unit_set) == 1 or distributed:
                raise PrototokensError(f"out of memory even for a single sharing unit of {len(idx)} rows") from None
            half = len(unit_set) // 2
            solve(unit_set[:half])
            solve(unit_set[half:])
            return
        best_e[:] = run.best_e.cpu()
        best_m[:] = run.best_m.cpu()
        tracker.done(key, sub, run)

    try:
        solve(sorted(set(units)))
    finally:
        bar.close()
    tracker.close()
    return ProtoTokens(
        e=best_e, m=best_m, rows=rows, arrangement=arr.name, model_name=lm.name,
        fingerprint=lm.fingerprint, recipe=recipe.to_dict(),
        sharing={"e": share_e, "m": share_m}, seconds=tracker.seconds, dtype=dtype_name(lm.dtype),
    )


_RESULT_FIELDS = ("correct", "c_tokens", "accuracy", "steps", "loss", "status", "restarts")
