"""Fitting and decoding speed: the engine against a faithful per-text loop, side by side.

(a) `loop`: the paper's procedure written directly: one text at a time, HF eager forward with
    full logits, AdamW, token accuracy read on the host every step, stop at 100%.
(b) `engine`: prototokens.fit_token_ids on the whole batch (optionally captured with --compile).

Three measurements, all in one run on one device:
1. step time at fixed shapes (no early stop): tokens/s and achieved TFLOP/s against a matmul
   peak measured in the same run (FLOPs ~ 4 x params x tokens: forward + input-gradient backward);
2. texts fully reconstructed per second, both methods run to convergence on the same texts with
   the same recipe and step budget, and the ratio (b)/(a);
3. one-pass decoding against a bare forward of the same length and against greedy
   autoregressive decoding (HF `generate` with KV cache from one [mem] vector).

    python benchmarks/fit_speed.py                         # GPU-sized grid (N 32/128/256, batch 1..256)
    python benchmarks/fit_speed.py --ns 16 --batches 1 4 --texts 4 --steps 5 --budget 300   # CPU-sized
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

import prototokens as pt

# Public-domain prose (Jane Austen, Pride and Prejudice, ch. 1), cut into windows of N tokens.
SOURCE = (
    "It is a truth universally acknowledged, that a single man in possession of a good fortune, must be in "
    "want of a wife. However little known the feelings or views of such a man may be on his first entering a "
    "neighbourhood, this truth is so well fixed in the minds of the surrounding families, that he is considered "
    "the rightful property of some one or other of their daughters. My dear Mr. Bennet, said his lady to him one "
    "day, have you heard that Netherfield Park is let at last? Mr. Bennet replied that he had not. But it is, "
    "returned she; for Mrs. Long has just been here, and she told me all about it. Mr. Bennet made no answer. "
    "Do you not want to know who has taken it? cried his wife impatiently. You want to tell me, and I have no "
    "objection to hearing it. This was invitation enough. Why, my dear, you must know, Mrs. Long says that "
    "Netherfield is taken by a young man of large fortune from the north of England; that he came down on "
    "Monday in a chaise and four to see the place, and was so much delighted with it, that he agreed with Mr. "
    "Morris immediately; that he is to take possession before Michaelmas, and some of his servants are to be "
    "in the house by the end of next week. What is his name? Bingley. Is he married or single? Oh! Single, my "
    "dear, to be sure! A single man of large fortune; four or five thousand a year. What a fine thing for our "
    "girls! How so? How can it affect them? My dear Mr. Bennet, replied his wife, how can you be so tiresome!"
)


def texts_of(lm: pt.FrozenLM, n: int, count: int) -> list[list[int]]:
    ids = lm.encode(SOURCE)
    while len(ids) < n + count * 7:
        ids = ids + ids
    return [ids[i * 7: i * 7 + n] for i in range(count)]  # overlapping windows, all different


def sync(dev: torch.device) -> None:
    if dev.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(lm: pt.FrozenLM) -> float:
    """Measured dense matmul rate (TFLOP/s) in the model's dtype on its device."""
    n = 4096 if lm.device.type == "cuda" else 1024
    a = torch.randn(n, n, device=lm.device, dtype=lm.dtype)
    b = torch.randn(n, n, device=lm.device, dtype=lm.dtype)
    for _ in range(3):
        a @ b
    sync(lm.device)
    reps = 50 if lm.device.type == "cuda" else 5
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(lm.device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e12


def loop_fit(lm: pt.FrozenLM, ids: list[int], recipe: pt.Recipe, max_steps: int, seed: int = 0,
             stop: bool = True) -> tuple[bool, int]:
    """The paper's procedure for one text, written plainly: returns (reached 100%, steps)."""
    if (recipe.init != "normal" or recipe.schedule != "constant" or recipe.warmup_steps or recipe.restarts
            or recipe.plateau_cycle):
        raise SystemExit(f"the loop implements N(0, s) init, a constant lr with plateau cuts and focal loss "
                         f"only; not {recipe.name}")
    d, n = lm.hidden_size, len(ids)
    g = torch.Generator().manual_seed(seed)
    e = (torch.randn(d, generator=g) * recipe.init_scale).to(lm.device).requires_grad_()
    m = (torch.randn(d, generator=g) * recipe.init_scale).to(lm.device).requires_grad_()
    opt = torch.optim.AdamW([e, m], lr=recipe.lr, betas=recipe.betas, weight_decay=recipe.weight_decay)
    target = torch.tensor(ids, device=lm.device)
    best, best_step, cut_step, mult = -1.0, 0, 0, 1.0
    for step in range(max_steps + 1):
        x = torch.cat([e[None], m[None].expand(n - 1, d)])[None].to(lm.dtype)
        logits = lm.model(inputs_embeds=x).logits[0].float()
        acc = (logits.argmax(-1) == target).float().mean().item()  # the per-step host read
        if stop and acc == 1.0:
            return True, step
        if acc > best:
            best, best_step = acc, step
        if step == max_steps:
            break
        ce = F.cross_entropy(logits, target, reduction="none")
        loss = (ce * (1 - torch.exp(-ce)).pow(recipe.focal_gamma)).mean() if recipe.focal_gamma else ce.mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if recipe.plateau_after and step - max(best_step, cut_step) >= recipe.plateau_after:
            mult, cut_step = max(mult * recipe.plateau_factor, recipe.plateau_min), step  # as the engine
            opt.param_groups[0]["lr"] = recipe.lr * mult
    return False, max_steps


def step_times(lm, n, batch, steps, compile_):
    """Seconds per optimisation step: loop at batch 1, engine at `batch` (no early stop)."""
    rec = pt.get_recipe("paper", max_steps=steps, stop_accuracy=2.0)
    texts = texts_of(lm, n, batch)
    loop_fit(lm, texts[0], rec, 2, stop=False)  # warm-up
    sync(lm.device)
    t = time.perf_counter()
    loop_fit(lm, texts[0], rec, steps, stop=False)
    sync(lm.device)
    loop_step = (time.perf_counter() - t) / (steps + 1)
    pt.fit_token_ids(lm, texts, recipe=rec.replace(max_steps=2), compile=compile_)  # warm-up / compile
    sync(lm.device)
    t = time.perf_counter()
    pt.fit_token_ids(lm, texts, recipe=rec, compile=compile_)
    sync(lm.device)
    return loop_step, (time.perf_counter() - t) / (steps + 1)


def reconstruction_rate(lm, n, count, budget, recipe_name, compile_):
    """Texts reaching 100% per second, loop vs engine, same texts, recipe and step budget."""
    rec = pt.get_recipe(recipe_name, max_steps=budget)
    texts = texts_of(lm, n, count)
    sync(lm.device)
    t = time.perf_counter()
    loop_ok = sum(loop_fit(lm, ids, rec, budget)[0] for ids in texts)
    sync(lm.device)
    loop_s = time.perf_counter() - t
    t = time.perf_counter()
    fit = pt.fit_token_ids(lm, texts, recipe=rec, compile=compile_)
    sync(lm.device)
    eng_s = time.perf_counter() - t
    eng_ok = sum(r.accuracy == 1.0 for r in fit.rows)
    return {"texts": count, "loop_ok": loop_ok, "loop_s": loop_s, "engine_ok": eng_ok, "engine_s": eng_s,
            "loop_rate": loop_ok / loop_s, "engine_rate": eng_ok / eng_s,
            "ratio": (eng_ok / eng_s) / (loop_ok / loop_s) if loop_ok else float("nan")}


@torch.no_grad()
def decode_times(lm, n, reps):
    ids = texts_of(lm, n, 1)[0]
    e, m = torch.randn(lm.hidden_size), torch.randn(lm.hidden_size)
    x = torch.randn(1, n, lm.hidden_size, device=lm.device, dtype=lm.dtype)

    def timed(fn):
        fn()
        sync(lm.device)
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        sync(lm.device)
        return (time.perf_counter() - t) / reps

    one_pass = timed(lambda: pt.decode_ids(lm, e, m, len(ids)))
    bare = timed(lambda: lm.model(inputs_embeds=x))
    mem = torch.randn(1, 1, lm.hidden_size, device=lm.device, dtype=lm.dtype)
    gen = timed(lambda: lm.model.generate(inputs_embeds=mem, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                          pad_token_id=lm.bos_id))
    return {"one_pass_s": one_pass, "bare_forward_s": bare, "generate_s": gen,
            "one_pass_over_bare": one_pass / bare, "speedup_vs_generate": gen / one_pass}


SECTIONS = ("steps", "reconstruction", "decode")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--ns", type=int, nargs="+", default=[32, 128, 256])
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64, 256])
    ap.add_argument("--steps", type=int, default=20, help="steps timed per step-time cell")
    ap.add_argument("--texts", type=int, default=64, help="texts in the reconstruction-rate comparison")
    ap.add_argument("--budget", type=int, default=2000, help="step budget per text in that comparison")
    ap.add_argument("--recipe", default="large-init")
    ap.add_argument("--compile", action="store_true", help="captured engine step (CUDA graphs on a GPU)")
    ap.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS),
                    help="run only these measurements (default: all three)")
    ap.add_argument("--json", help="also write all figures to this JSON file")
    args = ap.parse_args()

    torch.manual_seed(0)
    lm = pt.load_model(args.model, device=args.device, dtype=args.dtype)
    params = sum(p.numel() for p in lm.model.parameters())
    peak = matmul_peak(lm)
    dev = torch.cuda.get_device_name() if lm.device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# fit_speed: {lm.name}, {params / 1e6:.0f}M params, {dev}, {str(lm.dtype).removeprefix('torch.')}, "
          f"compile={args.compile}, measured matmul peak {peak:.2f} TFLOP/s\n")
    out = {"model": lm.name, "device": dev, "dtype": str(lm.dtype), "peak_tflops": peak, "compile": args.compile,
           "steps": [], "reconstruction": [], "decode": []}

    if "steps" in args.only:
        print("| N | batch | loop step (b=1) | engine step | engine tokens/s | engine TFLOP/s | % of peak |")
        print("|---|---|---|---|---|---|---|")
    for n in args.ns if "steps" in args.only else []:
        for b in args.batches:
            loop_s, eng_s = step_times(lm, n, b, args.steps, args.compile)
            tok_s = b * n / eng_s
            tflops = 4 * params * b * n / eng_s / 1e12
            out["steps"].append({"n": n, "batch": b, "loop_step_s": loop_s, "engine_step_s": eng_s,
                                 "tokens_per_s": tok_s, "tflops": tflops})
            print(f"| {n} | {b} | {loop_s * 1e3:.1f} ms | {eng_s * 1e3:.1f} ms | {tok_s:,.0f} | {tflops:.3f} "
                  f"| {100 * tflops / peak:.1f}% |", flush=True)

    if "reconstruction" in args.only:
        print("\n| N | texts | recipe | loop: solved / s | engine: solved / s | loop texts/s | engine texts/s | ratio |")
        print("|---|---|---|---|---|---|---|---|")
    for n in args.ns if "reconstruction" in args.only else []:
        r = reconstruction_rate(lm, n, args.texts, args.budget, args.recipe, args.compile)
        out["reconstruction"].append({"n": n, "recipe": args.recipe, **r})
        print(f"| {n} | {r['texts']} | {args.recipe} | {r['loop_ok']} / {r['loop_s']:.1f} | {r['engine_ok']} / "
              f"{r['engine_s']:.1f} | {r['loop_rate']:.4f} | {r['engine_rate']:.4f} | {r['ratio']:.1f}x |", flush=True)

    if "decode" in args.only:
        print("\n| N | one-pass decode | bare forward | one-pass / bare | HF generate (KV cache) | one-pass speed-up |")
        print("|---|---|---|---|---|---|")
    for n in args.ns if "decode" in args.only else []:
        d = decode_times(lm, n, reps=20 if lm.device.type == "cuda" else 3)
        out["decode"].append({"n": n, **d})
        print(f"| {n} | {d['one_pass_s'] * 1e3:.1f} ms | {d['bare_forward_s'] * 1e3:.1f} ms | "
              f"{d['one_pass_over_bare']:.2f} | {d['generate_s'] * 1e3:.1f} ms | {d['speedup_vs_generate']:.1f}x |",
              flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
