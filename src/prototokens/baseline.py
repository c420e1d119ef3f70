"""The autoregressive baseline of Kuratov et al. 2025 ("Cramming 1568 tokens into a single vector").

K trainable [mem] vectors are prepended to the text, and only they are trained, with the
ordinary teacher-forced causal-LM loss of the frozen model::

    inputs   [mem_1 .. mem_K, BOS, t_1 .. t_{N-1}]  (token embeddings in the model's dtype)
    targets              t_1 at BOS, t_2 at t_1, ..., t_N at t_{N-1}

as in Kuratov et al.'s code, where the [mem] vectors precede the tokenised text with its BOS
and the outputs at the [mem] positions are not trained. BOS is the token `metrics.lm_cross_entropy`
conditions H_LM on (`FrozenLM.bos_id`: the tokenizer's BOS, else its EOS), so the information
gain compares like with like. With ``bos=False`` the first token is predicted at mem_K instead
(inputs ``[mem_1 .. mem_K, t_1 .. t_{N-1}]``). The text is then read back by greedy
autoregressive decoding from the mem vectors (and BOS) alone.

Each row (a text and a seed) has its own (K, d) fp32 mem vectors, initialised like the engine's
vectors (`recipe.init` / `init_scale`, from a generator seeded by the text's token ids, the seed
and the vector's index), so a row starts the same alone or in a batch. The batch loss is the sum
over rows of each row's mean token cross-entropy: rows are independent, and a row follows the
same trajectory alone or in a batch. Texts of different lengths share a batch by right padding
(causal mask: real positions never see the padding). A row stops at `recipe.stop_accuracy`
teacher-forced token accuracy (100% by default), when `recipe.patience` runs out, at the step
limit, or on a non-finite loss (that row fails, the others go on); its best state is kept and
it leaves the batch.

The default recipe is `kuratov`, Kuratov et al.'s setup: the paper's optimiser (AdamW lr 0.01,
betas (0.9, 0.9), weight decay 0.01, 5000 steps, stop at 100%), mem vectors drawn at the scale of
the model's input embeddings, and a stop after 2000 steps without improvement.

Metrics (`evaluate_memory`): greedy-decoded accuracy and exactness, teacher-forced accuracy,
H_LM (`metrics.lm_cross_entropy`), the text's total cross-entropy given the mem vectors, and
their difference, the information gain (Kuratov et al.'s C_H) in nats.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from . import __version__
from .artefacts import FORMAT as PROTO_FORMAT
from .artefacts import FittedRow, target_ids_tensor, write_artefact
from .engine import (
    _is_oom,
    _slice_adam,
    chunked_token_losses,
    forward_hidden,
    init_vectors,
    optimiser_step,
    show_progress,
    step_loop,
    stop_status,
    stopped,
)
from .errors import PrototokensError
from .loading import FrozenLM, check_model, dtype_name
from .metrics import lm_cross_entropy, nats_to_bits
from .recipes import Recipe, get_recipe
from .snapshots import FitProgress, Snapshots, fit_identity, load_loop_state

FORMAT = "prototokens-memory/1"


@dataclass
class MemoryRow(FittedRow):
    """A [mem] row: accuracy and correctness are teacher-forced."""


@dataclass
class MemoryFit:
    """The result of `fit_memory`: mem vectors (R, K, d) fp32 on the CPU and one MemoryRow per row."""

    mem: torch.Tensor
    rows: list[MemoryRow]
    model_name: str
    fingerprint: str
    recipe: dict
    seconds: float = 0.0
    version: str = __version__
    bos_id: int | None = None  # the token between the mem vectors and the text; None: none
    dtype: str | None = None  # the model's dtype during the fit; None in files from before it was recorded

    @property
    def n_mem(self) -> int:
        return self.mem.shape[1]

    def best_row(self) -> int:
        """Index of the most accurate row (the first on ties)."""
        return max(range(len(self.rows)), key=lambda i: (self.rows[i].accuracy, -i))

    def header(self) -> dict:
        return {
            "format": FORMAT,
            "version": self.version,
            "model": self.model_name,
            "fingerprint": self.fingerprint,
            "n_mem": self.n_mem,
            "bos_id": self.bos_id,
            "dtype": self.dtype,
            "recipe": self.recipe,
            "seconds": self.seconds,
            "rows": [r.summary() for r in self.rows],
        }

    def save(self, path: str | Path) -> Path:
        """Write the fit as safetensors (`mem`, `target_ids`); the JSON header sits in the file's metadata."""
        return write_artefact(path, {"mem": self.mem.detach().float().cpu().contiguous(),
                                     "target_ids": target_ids_tensor(self.rows)}, self.header())

    @classmethod
    def load(cls, path: str | Path) -> MemoryFit:
        """Read a file written by `save`; a clear error for anything else."""
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
            raise PrototokensError(f"{path} is a safetensors file but not a prototokens memory fit")
        try:
            head = json.loads(meta["prototokens"])
            if head.get("format") == PROTO_FORMAT:
                raise PrototokensError(f"{path} holds proto-tokens, not memory vectors (load it with ProtoTokens.load)")
            if head.get("format") != FORMAT:
                raise PrototokensError(f"{path} has unsupported format {head.get('format')!r}")
            mem = tensors["mem"]
            if mem.dim() != 3 or len(mem) != len(head["rows"]):
                raise PrototokensError(f"{path} is corrupt: mem has shape {tuple(mem.shape)} "
                                       f"for {len(head['rows'])} row(s)")
            rows = []
            for i, r in enumerate(head["rows"]):
                ids = tensors["target_ids"][i, :r["n_tokens"]].tolist()
                if ids != r["token_ids"]:
                    raise PrototokensError(f"{path} is corrupt: target ids of row {i} disagree with its header")
                rows.append(MemoryRow(
                    token_ids=ids, seed=r["seed"], accuracy=r["accuracy"], correct=[c == "1" for c in r["correct"]],
                    steps=r["steps"], loss=r["loss"], status=r["status"], text=r.get("text"),
                ))
            return cls(mem=mem, rows=rows, model_name=head["model"], fingerprint=head["fingerprint"],
                       recipe=head["recipe"], seconds=head.get("seconds", 0.0), version=head["version"],
                       bos_id=head.get("bos_id"), dtype=head.get("dtype"))
        except (KeyError, TypeError, json.JSONDecodeError) as e:
            raise PrototokensError(f"{path} has a damaged prototokens header ({e})") from None


@torch.no_grad()
def _embed(lm: FrozenLM, token_ids: list[list[int]], bos_id: int | None = None) -> torch.Tensor:
    """(R, W, d) input embeddings of [BOS,] t_1..t_{N-1} of each text, right-padded to the longest
    (W = N_max with a BOS, N_max - 1 without; model dtype, on the device)."""
    pad = lm.tokenizer.pad_token_id
    lead = [] if bos_id is None else [bos_id]
    inputs = [lead + list(t[:-1]) for t in token_ids]
    ids = torch.full((len(inputs), max(map(len, inputs))), 0 if pad is None else int(pad), dtype=torch.long)
    for i, t in enumerate(inputs):
        ids[i, :len(t)] = torch.tensor(t, dtype=torch.long)
    return lm.model.get_input_embeddings()(ids.to(lm.device)).to(lm.dtype)


def _targets(token_ids: list[list[int]], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """(R, N_max) targets (-100 = padding) and (R,) float token counts."""
    width = max(len(t) for t in token_ids)
    targets = torch.full((len(token_ids), width), -100, dtype=torch.long)
    for i, t in enumerate(token_ids):
        targets[i, :len(t)] = torch.tensor(t, dtype=torch.long)
    n = torch.tensor([float(len(t)) for t in token_ids])
    return targets.to(device), n.to(device)


def mem_token_losses(lm: FrozenLM, mem: torch.Tensor, emb: torch.Tensor,
                     targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-position cross-entropy and correctness (R, N_max) of the targets given mem (R, K, d) and the
    text's input embeddings `emb` from `_embed` (with or without BOS): one forward pass."""
    inputs = torch.cat([mem.to(lm.dtype), emb], dim=1)
    # the last N_max outputs: at BOS (or mem_K), t_1, ..., t_{N-1}
    hidden = forward_hidden(lm, inputs)[:, inputs.shape[1] - targets.shape[1]:]
    return chunked_token_losses(lm, hidden, targets)


class _MemRun:
    """Optimises the mem vectors of a set of independent rows until every row has stopped."""

    def __init__(self, lm: FrozenLM, token_ids: list[list[int]], mem0: torch.Tensor, recipe: Recipe,
                 check_every: int, bar: tqdm | None, bos_id: int | None):
        self.lm, self.recipe, self.check_every, self.bar = lm, recipe, check_every, bar
        dev = lm.device
        n_rows = len(token_ids)
        self.targets, self.n_tokens = _targets(token_ids, dev)
        self.emb = _embed(lm, token_ids, bos_id)
        self.best_mem = mem0.to(dev).clone()
        self.best_acc = torch.full((n_rows,), -1.0, device=dev)
        self.best_step = torch.zeros(n_rows, dtype=torch.long, device=dev)
        self.best_loss = torch.full((n_rows,), float("nan"), device=dev)
        self.best_correct = torch.zeros_like(self.targets, dtype=torch.bool)
        self.bad = torch.zeros(n_rows, dtype=torch.bool, device=dev)
        self.status = ["max_steps"] * n_rows
        self.active = torch.arange(n_rows, device=dev)
        self.mem = torch.nn.Parameter(self.best_mem.clone())
        self.opt = torch.optim.AdamW(self._optimised(), lr=recipe.lr, betas=recipe.betas,
                                     weight_decay=recipe.weight_decay)

    def step(self, step: int, update: bool) -> None:
        rows = self.active
        n = self.n_tokens[rows]
        with torch.set_grad_enabled(update):
            loss, correct = mem_token_losses(self.lm, self.mem, self.emb[rows], self.targets[rows])
            row_loss = loss.sum(1) / n
            finite = torch.isfinite(row_loss)
        acc = correct.sum(1) / n
        bad = self.bad[rows] | ~finite
        self.bad[rows] = bad
        improved = ~bad & (acc > self.best_acc[rows])
        self.best_acc[rows] = torch.where(improved, acc, self.best_acc[rows])
        self.best_step[rows] = torch.where(improved, torch.full_like(rows, step), self.best_step[rows])
        self.best_loss[rows] = torch.where(improved, row_loss.detach(), self.best_loss[rows])
        self.best_correct[rows] = torch.where(improved.unsqueeze(-1), correct, self.best_correct[rows])
        self.best_mem[rows] = torch.where(improved.view(-1, 1, 1), self.mem.detach(), self.best_mem[rows])
        show_progress(self.bar, step, self.check_every, acc, row_loss)
        if update:
            optimiser_step(self.opt, self.recipe, step, row_loss, finite, (self.mem,))

    def finish_rows(self, step: int, final: bool) -> bool:
        """Retire stopped rows and compact the batch; return whether any row is still active."""
        done = stopped(self.recipe, self.bad, self.best_acc, self.best_step, step, final)
        keep = ~done[self.active]
        if bool(keep.all()):
            return True
        for r in self.active[~keep].tolist():
            self.status[r] = stop_status(self.recipe, bool(self.bad[r]), self.best_acc[r].item(), final) or self.status[r]
        keep_idx = torch.nonzero(keep).squeeze(1)
        self.active = self.active[keep_idx]
        mem = torch.nn.Parameter(self.mem.detach()[keep_idx].clone())
        _slice_adam(self.opt, self.mem, mem, keep_idx)
        self.mem = mem
        self.opt.param_groups[0]["params"] = self._optimised()
        return len(self.active) > 0

    def _optimised(self) -> list[torch.nn.Parameter]:
        """The parameters the optimiser updates: the [mem] vectors."""
        return [self.mem]

    # what a snapshot keeps (snapshots.loop_state); the rest is fixed by the rows and the recipe
    _STATE = ("best_mem", "best_acc", "best_step", "best_loss", "best_correct", "bad", "active")
    _LISTS = ("status",)
    _PARAMS = ("mem",)

    def load_state(self, state: dict) -> int:
        """Take up a snapshot's state; return the step to continue from."""
        return load_loop_state(self, state, self.lm.device)

    def run(self, rows: list[MemoryRow], resume: dict | None = None, on_check=None) -> None:
        """Fit to the end, from step 0 or from a snapshot's state; on_check(next_step) after each stop check."""
        start = self.load_state(resume) if resume is not None else 0
        step_loop(self.step, self.finish_rows, self.recipe.max_steps, self.check_every, self.bar, start, on_check)
        for i, r in enumerate(rows):
            r.correct = [bool(c) for c in self.best_correct[i, :r.n_tokens].tolist()]
            r.accuracy = sum(r.correct) / r.n_tokens
            r.steps = int(self.best_step[i])
            r.loss = float(self.best_loss[i])
            r.status = self.status[i]


def fit_memory(lm: FrozenLM, token_ids: list[list[int]], *, n_mem: int = 1, seeds: int | list[int] = 1,
               recipe: str | Recipe | None = None, max_batch: int | None = None, check_every: int | None = None,
               progress: bool = False, texts: list[str] | None = None, bos: bool = True,
               snapshots: Snapshots | None = None) -> MemoryFit:
    """Fit K = `n_mem` [mem] vectors for every (text, seed) pair; rows are ordered text-major, seed-minor.

    recipe: default `kuratov` (Kuratov et al.'s setup; see `recipes.RECIPES`).
    bos: put the model's BOS token (`FrozenLM.bos_id`) between the mem vectors and the text, as
        Kuratov et al. do, so t_1 is predicted at BOS; False: t_1 is predicted at mem_K.
    max_batch: at most this many rows optimised at once (rows are independent; an out-of-memory
        error also halves the batch).
    check_every: steps between reads of the stop bookkeeping (default 1 on CPU, 10 on GPU).
    snapshots: save the fit's state there as it goes, and resume from a snapshot already there
        (the same steps as an uninterrupted fit); the file is deleted when the fit returns.
    """
    recipe = get_recipe(recipe or "kuratov")
    unsupported = [f for f, off in (("restarts", 0), ("focal_gamma", 0.0), ("plateau_after", None),
                                    ("phase_steps", None), ("m_init_scale", None))
                   if getattr(recipe, f) != off]
    if unsupported:
        raise PrototokensError(f"the [mem] baseline does not support recipe field(s) {', '.join(unsupported)} "
                               f"(recipe {recipe.name!r}); use 'kuratov' or 'paper' with other overrides")
    seed_list = list(range(seeds)) if isinstance(seeds, int) else list(seeds)
    if not token_ids:
        raise PrototokensError("no texts to fit")
    if not seed_list:
        raise PrototokensError("at least one seed is needed")
    if n_mem < 1:
        raise PrototokensError(f"n_mem must be >= 1, got {n_mem}")
    if max_batch is not None and max_batch < 1:
        raise PrototokensError(f"max_batch must be >= 1, got {max_batch}")
    bos_id = lm.bos_id if bos else None
    limit = lm.max_positions
    for i, ids in enumerate(token_ids):
        if len(ids) == 0:
            raise PrototokensError(f"text {i} tokenises to no tokens")
        need = n_mem + len(ids) - (0 if bos else 1)
        if limit is not None and need > limit:
            raise PrototokensError(f"text {i} needs {need} positions ({len(ids)} tokens after "
                                   f"{n_mem} mem vectors{' and BOS' if bos else ''}) but {lm.name} has only {limit}")
    pairs = [(t, s) for t in range(len(token_ids)) for s in seed_list]
    keys = [(token_ids[t], s, f"mem{k}") for t, s in pairs for k in range(n_mem)]
    mem = init_vectors(lm, keys, recipe).view(len(pairs), n_mem, lm.hidden_size)
    rows = [MemoryRow(token_ids=list(token_ids[t]), seed=s, text=texts[t] if texts else None) for t, s in pairs]
    if check_every is None:
        check_every = 1 if lm.device.type == "cpu" else 10
    splits = max_batch if max_batch is not None and max_batch < len(rows) else None
    tracker = FitProgress(snapshots, fit_identity("memory", lm.fingerprint, token_ids, seed_list, n_mem, bos_id,
                                                  recipe.to_dict(), splits, check_every),
                          {"mem": mem}, ("correct", "accuracy", "steps", "loss", "status"))
    bar = tqdm(total=None, desc="fitting mem", unit="step", disable=not progress, leave=False, mininterval=0.5)

    def solve(idx: list[int]) -> None:
        if max_batch is not None and len(idx) > max_batch:
            solve(idx[:len(idx) // 2])
            solve(idx[len(idx) // 2:])
            return
        key = ",".join(map(str, idx))
        if tracker.finished(key, [rows[i] for i in idx]):
            return
        run = _MemRun(lm, [rows[i].token_ids for i in idx], mem[idx], recipe, check_every, bar if progress else None,
                      bos_id)
        try:
            run.run([rows[i] for i in idx], tracker.resume(key), on_check=lambda i: tracker.checked(key, run, i))
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not _is_oom(e):
                raise
            del run
            if lm.device.type == "cuda":
                torch.cuda.empty_cache()
            if len(idx) == 1:
                raise PrototokensError("out of memory even for a single row") from None
            solve(idx[:len(idx) // 2])
            solve(idx[len(idx) // 2:])
            return
        mem[idx] = run.best_mem.float().cpu()
        tracker.done(key, [rows[i] for i in idx], run)

    try:
        solve(list(range(len(rows))))
    finally:
        bar.close()
    tracker.close()
    return MemoryFit(mem=mem, rows=rows, model_name=lm.name, fingerprint=lm.fingerprint, recipe=recipe.to_dict(),
                     seconds=tracker.seconds, bos_id=bos_id, dtype=dtype_name(lm.dtype))


@torch.no_grad()
def greedy_decode_batch(lm: FrozenLM, mem: torch.Tensor, n_tokens: int, bos_id: int | None = None) -> list[list[int]]:
    """Greedy autoregressive decoding (KV cache) of `n_tokens` tokens from each row of mem (R, K, d) alone
    (followed by the token `bos_id` if given).

    Pure argmax at every step: no logits processors (an EOS is emitted if it is the argmax, and
    counts as a wrong token), unlike `generate` with `min_new_tokens`, which would mask EOS out.
    """
    if n_tokens < 1:
        return [[] for _ in range(len(mem))]
    prompt = mem.to(lm.device, lm.dtype)
    if bos_id is not None:
        bos = lm.model.get_input_embeddings()(torch.tensor([bos_id], device=lm.device)).to(lm.dtype)
        prompt = torch.cat([prompt, bos.expand(len(prompt), 1, -1)], dim=1)
    out = lm.model(inputs_embeds=prompt, use_cache=True)
    tok = out.logits[:, -1].argmax(-1)
    toks = [tok]
    for _ in range(n_tokens - 1):
        out = lm.model(input_ids=tok[:, None], past_key_values=out.past_key_values, use_cache=True)
        tok = out.logits[:, -1].argmax(-1)
        toks.append(tok)
    return torch.stack(toks, 1).tolist()


def greedy_decode(lm: FrozenLM, mem: torch.Tensor, n_tokens: int, bos_id: int | None = None) -> list[int]:
    """Greedy autoregressive decoding of `n_tokens` tokens from the K mem vectors (K, d) (and `bos_id`) alone."""
    return greedy_decode_batch(lm, mem.view(1, -1, mem.shape[-1]), n_tokens, bos_id)[0]


def decode_memory(lm: FrozenLM, fit: MemoryFit, row: int | None = None) -> list[int]:
    """Greedy-decode one row of a fit (default: its most accurate row) on `lm`, which must be the fit's model."""
    check_model(lm, fit.model_name, fit.fingerprint, fit.mem.shape[-1])
    row = fit.best_row() if row is None else row
    if not 0 <= row < len(fit.rows):
        raise PrototokensError(f"row {row} out of range: the fit has {len(fit.rows)} row(s)")
    return greedy_decode(lm, fit.mem[row], fit.rows[row].n_tokens, fit.bos_id)


@torch.no_grad()
def evaluate_memory(lm: FrozenLM, fit: MemoryFit, rows: list[int] | None = None,
                    batch_size: int = 16) -> list[dict]:
    """Per row: greedy-decoded accuracy / exactness, teacher-forced accuracy, H_LM, CE given mem, information gain.

    ce_with_mem_nats is the text's total teacher-forced cross-entropy given the mem vectors, and
    info_gain_nats = h_lm_nats - ce_with_mem_nats (Kuratov et al.'s C_H), in nats.
    """
    check_model(lm, fit.model_name, fit.fingerprint, fit.mem.shape[-1])
    rows = list(range(len(fit.rows))) if rows is None else list(rows)
    for i in rows:
        if not 0 <= i < len(fit.rows):
            raise PrototokensError(f"row {i} out of range: the fit has {len(fit.rows)} row(s)")
    h_lm = lm_cross_entropy(lm, [fit.rows[i].token_ids for i in rows], batch_size=batch_size)
    out = []
    for start in range(0, len(rows), batch_size):
        chunk = rows[start:start + batch_size]
        ids = [fit.rows[i].token_ids for i in chunk]
        targets, _ = _targets(ids, lm.device)
        mem = fit.mem[chunk].to(lm.device)
        loss, correct = mem_token_losses(lm, mem, _embed(lm, ids, fit.bos_id), targets)
        ce = loss.sum(1).tolist()
        tf_correct = correct.sum(1).tolist()
        greedy = greedy_decode_batch(lm, mem, targets.shape[1], fit.bos_id)
        for j, i in enumerate(chunk):
            target = fit.rows[i].token_ids
            got = greedy[j][:len(target)]
            c = sum(a == b for a, b in zip(got, target, strict=True))
            h = h_lm[start + j]
            out.append({
                "row": i, "seed": fit.rows[i].seed, "n_tokens": len(target), "n_mem": fit.n_mem,
                "accuracy": c / len(target), "c_tokens": c, "exact": got == target,
                "tf_accuracy": tf_correct[j] / len(target), "h_lm_nats": h, "h_lm_bits": nats_to_bits(h),
                "ce_with_mem_nats": ce[j], "info_gain_nats": h - ce[j], "info_gain_bits": nats_to_bits(h - ce[j]),
            })
    return out
