"""GD and LCGD step time: jaxicl vs the same step written with transformers/PyTorch, side by side.

Both train only the attention key/value projections with plain SGD, one demonstration per step,
on the same 32 SST-2 demonstrations (token ids shared), loss = mean next-token cross-entropy over
the demonstration. LCGD in PyTorch: a forward pre-hook detaches every decoder layer's input and
forward hooks collect each layer's output, read out through the final norm and the unembedding,
the per-layer losses summed — the authors' recipe. Each side runs in its own subprocess so peak
RSS is its own.

    python experiments/bench_finetune.py [--model gemma3-270m] [--task sst2] [--seed 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import numpy as np
from benchutil import rss_mb, run_child


def _demos(model: str, task: str, seed: int):
    import jaxicl
    from jaxicl.data import build_prompts, get_task

    lm = jaxicl.load(model)
    task_obj = get_task(task)
    p = build_prompts(task_obj, lm.tokenizer, seed=seed, k=32, n_eval=1, max_len=lm.config.max_positions)
    return lm, [list(s) for s in p.ft_sequences], task_obj.lr



def run_jaxicl(args, method: str) -> dict:
    from jaxicl.engine.finetune import GD, LCGD, FinetuneOptions, finetune

    lm, demos, lr = _demos(args.model, args.task, args.seed)
    options = FinetuneOptions(lr=lr, objective={"gd": GD, "lcgd": LCGD}[method], all_grad_norms=False)
    t0 = time.perf_counter()
    finetune(lm.params, lm.config, demos[:1], options)
    first = time.perf_counter() - t0  # compile (every length bucket compiles once) + one step
    buckets = len({-(-len(d) // options.length_multiple) for d in demos})
    finetune(lm.params, lm.config, demos, options)  # compile the remaining length buckets
    result = finetune(lm.params, lm.config, demos, options)
    return {"step_s": result.seconds / len(demos), "first_s": first, "buckets": buckets,
            "losses": result.losses.tolist(), "peak_rss_mb": rss_mb()}


def _torch_step_fn(model, lr: float, layer_causal: bool):
    """One SGD step on k/v only; LCGD detaches block inputs and sums per-layer readout losses."""
    import torch

    body = model.model
    kv = [p for n, p in model.named_parameters() if "k_proj" in n or "v_proj" in n]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in kv:
        p.requires_grad_(True)
    outputs: list = []
    if layer_causal:
        def detach_input(module, args, kwargs):
            if args:
                return (args[0].detach(),) + tuple(args[1:]), kwargs
            kwargs["hidden_states"] = kwargs["hidden_states"].detach()
            return args, kwargs

        def keep_output(module, args, kwargs, out):
            outputs.append(out[0] if isinstance(out, tuple) else out)

        for layer in body.layers:
            layer.register_forward_pre_hook(detach_input, with_kwargs=True)
            layer.register_forward_hook(keep_output, with_kwargs=True)

    def step(ids):
        x = torch.tensor([ids])
        targets = x[0, 1:]
        outputs.clear()
        if layer_causal:
            model.model(x)
            loss = sum(
                torch.nn.functional.cross_entropy(model.lm_head(body.norm(h))[0, :-1].float(), targets)
                for h in outputs
            )
        else:
            loss = torch.nn.functional.cross_entropy(model(x).logits[0, :-1].float(), targets)
        loss.backward()
        with torch.no_grad():
            for p in kv:
                p -= lr * p.grad
                p.grad = None
        return float(loss)

    return step


def run_torch(args, method: str) -> dict:
    import torch
    import transformers

    from jaxicl.io import registry

    torch.set_num_threads(os.cpu_count() or 1)
    lm, demos, lr = _demos(args.model, args.task, args.seed)
    del lm
    path = registry.resolve(args.model)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32, attn_implementation="eager"
    )
    model.train()
    step = _torch_step_fn(model, lr, layer_causal=method == "lcgd")
    t0 = time.perf_counter()
    losses = [step(demos[0])]
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    losses += [step(d) for d in demos[1:]]
    return {"step_s": (time.perf_counter() - t0) / (len(demos) - 1), "first_s": first, "losses": losses,
            "peak_rss_mb": rss_mb()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    argv = [a for a in sys.argv[1:] if a not in ("--child", args.child)]
    if args.child:
        side, method = args.child.split("-")
        print(json.dumps((run_jaxicl if side == "jaxicl" else run_torch)(args, method)))
        return

    import jax
    import torch

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__} "
          f"({jax.default_backend()}), torch {torch.__version__}")
    print(f"{args.model}, {args.task} seed {args.seed}: 32 demonstrations, one SGD step each on k/v, fp32")
    print("| method | jaxicl ms/step | PyTorch ms/step | speed-up | jaxicl compile+first step s | "
          "jaxicl peak RSS MB | PyTorch peak RSS MB | max |Δ loss| over the epoch |")
    print("|---|---|---|---|---|---|---|---|")
    for method in ("gd", "lcgd"):
        ours, theirs = run_child(__file__, f"jaxicl-{method}", argv), run_child(__file__, f"torch-{method}", argv)
        dloss = float(np.max(np.abs(np.asarray(ours["losses"]) - np.asarray(theirs["losses"]))))
        print(f"| {method.upper()} | {1e3 * ours['step_s']:.0f} | {1e3 * theirs['step_s']:.0f} | "
              f"{theirs['step_s'] / ours['step_s']:.2f}x | {ours['first_s']:.1f} ({ours['buckets']} length buckets) | "
              f"{ours['peak_rss_mb']:.0f} | {theirs['peak_rss_mb']:.0f} | {dloss:.1e} |")


if __name__ == "__main__":
    main()
