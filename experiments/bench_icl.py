"""ICL scoring throughput: jaxicl vs transformers (PyTorch), measured side by side in one run.

Each method runs in its own subprocess (so peak RSS is its own) on the same prompts:
  * hf-full:   transformers scores the whole prompt (demonstrations + query) for every query,
               as the authors' code does;
  * hf-cached: transformers computes the demonstration prefix once and reuses a copy of its
               KV cache for every query (what a careful user would write);
  * jaxicl:    jaxicl.engine.scoring.evaluate (prefix KV cache shared by batches of length-sorted queries).
Then jaxicl's per-query cost for k in {0, 8, 16, 32, 64} demonstrations. Beside jaxicl's time it
prints its achieved GFLOP/s and this machine's own jitted 2048² fp32 matmul rate, measured in the
same process: "executed" counts what the device computes (padded rows and tokens included, the
formula of experiments/gpu_check.py), "useful" only each query's real tokens against the real
prefix; their gap is the padding.

    python experiments/bench_icl.py [--model gemma3-270m] [--task sst2] [--n-queries 200]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

from benchutil import matmul_gflops, rss_mb, run_child


def _prompts(model: str, task: str, k: int, n: int, seed: int):
    import jaxicl
    from jaxicl.data import build_prompts, get_task

    lm = jaxicl.load(model)
    prompts = build_prompts(get_task(task), lm.tokenizer, seed=seed, k=k, n_eval=n, max_len=lm.config.max_positions)
    return lm, prompts



def run_jaxicl(args) -> dict:
    import jax

    from jaxicl.engine.scoring import EvalOptions, evaluate, prefix_cache, score_rows

    lm, p = _prompts(args.model, args.task, args.k, args.n_queries, args.seed)
    options = EvalOptions(batch_size=args.batch_size, records=() if args.scores_only else EvalOptions().records)
    rss_loaded = rss_mb()
    t0 = time.perf_counter()
    first = evaluate(lm.params, lm.config, p.prefix_ids, p.query_ids[:1], p.candidate_ids, options)
    jax.block_until_ready(first.scores)
    first_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = evaluate(lm.params, lm.config, p.prefix_ids, p.query_ids, p.candidate_ids, options)
    total_first = time.perf_counter() - t0 + first_s
    t0 = time.perf_counter()
    result = evaluate(lm.params, lm.config, p.prefix_ids, p.query_ids, p.candidate_ids, options)
    warm = time.perf_counter() - t0
    executed, useful = icl_flops(lm.config, p, options)
    return {
        "executed_gflops": executed / warm / 1e9,
        "useful_gflops": useful / warm / 1e9,
        "matmul_gflops": matmul_gflops(),
        "seconds": warm,
        "seconds_incl_compile": total_first,
        "first_result_s": first_s,
        "compilations": score_rows._cache_size() + prefix_cache._cache_size(),
        "predictions": result.predictions.tolist(),
        "prefix_tokens": len(p.prefix_ids),
        "k_icl": p.k_icl,
        "peak_rss_mb": rss_mb(),
        "rss_after_load_mb": rss_loaded,
    }


def icl_flops(config, p, options) -> tuple[float, float]:
    """(executed, useful) matmul FLOPs of one `evaluate` of the prompts `p`: executed follows
    evaluate's padding (prefix to a multiple of 64, its own batches of rows: icl.length_batches);
    useful counts each query row's real tokens over the real prefix."""
    from gpu_check import forward_flops

    from jaxicl.api import bucket
    from jaxicl.engine.scoring import _rows, length_batches

    rows = _rows(p.query_ids, p.candidate_ids, options.probe)
    prefix = bucket(len(p.prefix_ids), 64) if len(p.prefix_ids) else 0
    executed = forward_flops(config, 1, prefix, prefix, 0) if prefix else 0.0
    for _, length in length_batches(rows, options.batch_size, options.length_multiple):
        executed += forward_flops(config, options.batch_size, length, prefix + length, options.batch_size)
    useful = forward_flops(config, 1, len(p.prefix_ids), len(p.prefix_ids), 0) if len(p.prefix_ids) else 0.0
    useful += sum(forward_flops(config, 1, len(r.ids), len(p.prefix_ids) + len(r.ids), 1) for r in rows)
    return executed, useful


def _hf_model(model: str):
    import torch
    import transformers

    from jaxicl.io import registry

    path = registry.resolve(model)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, dtype=torch.float32
    ).eval()
    return ref


def run_hf(args, cached: bool) -> dict:
    import copy

    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    lm, p = _prompts(args.model, args.task, args.k, args.n_queries, args.seed)
    ref = _hf_model(args.model)
    del lm
    rss_loaded = rss_mb()
    first_tokens = [c[0] for c in p.candidate_ids]
    preds = []
    t0 = time.perf_counter()
    with torch.inference_mode():
        prefix = None
        if cached:
            prefix = ref(torch.tensor([list(p.prefix_ids)]), use_cache=True).past_key_values
        for i in range(p.n_eval):
            if cached:
                out = ref(torch.tensor([list(p.query_ids[i])]), past_key_values=copy.deepcopy(prefix), use_cache=True)
            else:
                out = ref(torch.tensor([p.icl_sequence(i)]), use_cache=False)
            logits = out.logits[0, -1]
            preds.append(int(np.argmax(logits[first_tokens].numpy())))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "predictions": preds, "peak_rss_mb": rss_mb(), "rss_after_load_mb": rss_loaded}


def run_k_sweep(args) -> dict:
    from jaxicl.engine.scoring import EvalOptions, evaluate

    out = {}
    for k in (0, 8, 16, 32, 64):
        lm, p = _prompts(args.model, args.task, k, args.n_queries, args.seed)
        options = EvalOptions(batch_size=args.batch_size)
        evaluate(lm.params, lm.config, p.prefix_ids, p.query_ids, p.candidate_ids, options)  # compile
        t0 = time.perf_counter()
        evaluate(lm.params, lm.config, p.prefix_ids, p.query_ids, p.candidate_ids, options)
        out[k] = {"ms_per_query": 1e3 * (time.perf_counter() - t0) / p.n_eval, "prefix_tokens": len(p.prefix_ids)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--seed", type=int, default=2)
    parser.add_argument("--n-queries", type=int, default=200)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--scores-only", action="store_true", help="jaxicl without probe records")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    argv = [a for a in sys.argv[1:] if a not in ("--child", args.child)]

    if args.child:
        fn = {"jaxicl": run_jaxicl, "hf-full": lambda a: run_hf(a, False), "hf-cached": lambda a: run_hf(a, True),
              "k-sweep": run_k_sweep}[args.child]
        print(json.dumps(fn(args)))
        return

    import jax
    import torch
    import transformers

    results = {m: run_child(__file__, m, argv) for m in ("jaxicl", "hf-cached", "hf-full", "k-sweep")}
    ours, cached, full, sweep = (results[m] for m in ("jaxicl", "hf-cached", "hf-full", "k-sweep"))
    n = args.n_queries
    agree = lambda a, b: sum(x == y for x, y in zip(a, b)) / n  # noqa: E731
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__} "
          f"({jax.default_backend()}), torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"{args.model}, {args.task}, k={args.k} (k_icl={ours['k_icl']}, prefix {ours['prefix_tokens']} tokens), "
          f"{n} queries, fp32, records {'off' if args.scores_only else 'on (attn_out, attn_scores, resid_post)'}")
    print("| method | seconds | ms/query | speed-up of jaxicl | peak RSS MB | agreement with jaxicl |")
    print("|---|---|---|---|---|---|")
    for name, r in (("jaxicl (warm)", ours), ("transformers, prefix cache reused", cached),
                    ("transformers, full prompt per query", full)):
        print(f"| {name} | {r['seconds']:.1f} | {1e3 * r['seconds'] / n:.0f} | {r['seconds'] / ours['seconds']:.1f}x | "
              f"{r['peak_rss_mb']:.0f} | {agree(r['predictions'], ours['predictions']):.3f} |")
    print(f"jaxicl incl. compilation: {ours['seconds_incl_compile']:.1f} s "
          f"({full['seconds'] / ours['seconds_incl_compile']:.1f}x vs full, "
          f"{cached['seconds'] / ours['seconds_incl_compile']:.1f}x vs cached); "
          f"time to first result {ours['first_result_s']:.1f} s; compilations: {ours['compilations']}")
    print(f"jaxicl achieved: {ours['executed_gflops']:.1f} GFLOP/s executed (padding included), "
          f"{ours['useful_gflops']:.1f} GFLOP/s useful; this machine's 2048^2 fp32 matmul: "
          f"{ours['matmul_gflops']:.1f} GFLOP/s -> {100 * ours['executed_gflops'] / ours['matmul_gflops']:.0f}% "
          f"executed, {100 * ours['useful_gflops'] / ours['matmul_gflops']:.0f}% useful")
    print("| k | prefix tokens | jaxicl ms/query |")
    print("|---|---|---|")
    for k, r in sweep.items():
        print(f"| {k} | {r['prefix_tokens']} | {r['ms_per_query']:.1f} |")


if __name__ == "__main__":
    main()
