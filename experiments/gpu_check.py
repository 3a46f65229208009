"""Accelerator check with random weights: ICL-evaluation throughput, GD/LCGD step time, compile
times and achieved TFLOP/s (and the fraction of the chip's peak) for two model shapes × two dtypes.

Models (random weights, `init_params`; no checkpoint, tokenizer or dataset is read):
  * gemma3-270m: the exact config of the Gemma 3 270M GGUF (vocab 262144, d 640, 18 layers,
    4 heads / 1 KV head of 256, d_ff 2048 GeGLU, sliding window 512 with every 6th layer global,
    RoPE bases 1e6 / 1e4, QK-norm, post-norms, tied embeddings);
  * xglm-1.3b: the paper's fairseq dense 1.3B (24 layers, d 2048, 32 heads of 64, d_ff 8192 GELU,
    vocab 50261 (GPT-2 BPE, as the KoboldAI/fairseq-dense-1.3B port), sinusoidal positions from offset 2, LayerNorm, biases, tied embeddings).
  `--tiny` swaps in tiny configs with the same knobs (same code path; seconds on a CPU).

dtypes: fp32, and bf16 (params cast with jax.tree.map; the forward keeps norms, softmax and
logits in fp32; finetuning then runs with compute_dtype="bfloat16").

Workloads, each timed after a warm-up call that also gives the first-call (compile) time:
  * ICL: `jaxicl.engine.scoring.evaluate` (records on, default EvalOptions taps) of N random queries of about
    `--query-tokens` tokens after one random prefix of `--prefix-tokens` tokens, two single-token
    candidates (one scoring row per query);
  * GD / LCGD: `jaxicl.engine.finetune.finetune` (default FinetuneOptions: all_grad_norms on, SGD on the
    keys/values, one jitted `train_step` per demonstration) on `--steps` random demonstrations of
    `--demo-tokens` tokens; step time = wall time / steps (one dispatch per step; the stats are
    fetched once per run);
  * ICL at a large batch: the same queries scored `--big-batch` rows at a time (the batch an
    accelerator needs; the issue's target is >= 40% of the bf16 peak on the xglm-1.3b shape);
  * batched GD / LCGD: `finetune_many(..., scan=True)` of `--runs` runs of `--steps` demonstrations
    at once (the runner's batched engine), against one run by `finetune`: demonstration-steps per
    second of each and their ratio (target on an accelerator: >= 20x with 18 runs).

FLOP counting (what the device executes, padding included):
  forward of R rows × T tokens with S keys per query (cache + chunk; every key is computed, masked
  or not, and the sliding window saves no work):
      L · [ 2·R·T·W  +  4·R·T·S·H·hd ]  +  2·d·V·(positions whose logits are computed)
  where W = d·H·hd + 2·d·KV·hd + H·hd·d + (3 if gated else 2)·d·d_ff (weights of one block's
  matmuls; biases, norms, RoPE, softmax and the embedding gather are not counted), 4·S·H·hd the
  QKᵀ and PV matmuls per query token, 2·d·V the unembedding (only where logits are computed: 1
  position per ICL row, every position for GD, every position of every layer for LCGD).
  ICL = prefix (its padded length, no logits) + each batch (batch_size rows, padded bucket length).
  A finetuning step = 3 × its forward (backward ≈ 2 × forward: input and weight gradients). This
  is an upper bound: the embedding gets no weight gradient and LCGD's stop_gradient on block
  inputs drops some input gradients, which XLA does not compute.
  XLA's own count (`jit(...).lower(...).cost_analysis()["flops"]`) is preferred when it is
  available and within ±25% of the analytic one; it is not always: XLA's HLO cost analysis counts
  a while-loop body once, and the layers run under `lax.scan`, so its count is then about 1/L of
  the real one (seen on CPU). Each row's JSON says which count it used ("flops_source").

Peak: dense TFLOP/s by `jax.devices()[0].device_kind` (PEAKS below; "unknown" otherwise, e.g.
CPU). fp32 rows are compared with the TF32 tensor-core peak on NVIDIA GPUs (XLA's default fp32
matmul precision there lets cuBLAS use TF32 unless jax_default_matmul_precision is "highest" /
"float32", in which case the plain fp32 peak is used) and with the bf16 peak on TPUs (default
precision is one bf16 pass). The JSON carries the basis ("peak_basis").

    PYTHONPATH=. python experiments/gpu_check.py [--tiny] [--out results.json] [--compile-cache DIR]
        [--models gemma3-270m,xglm-1.3b] [--dtypes fp32,bf16] [--queries N] [--batch-size B]
        [--prefix-tokens P] [--query-tokens Q] [--demo-tokens T] [--steps S] [--repeats R] [--seed K]
        [--big-batch B] [--runs N]

Needs only jax, flax, optax and numpy (no transformers, torch, gguf or datasets).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the repo's jaxicl importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax
import jax.numpy as jnp
import numpy as np

from jaxicl.engine.scoring import EvalOptions, evaluate, prefix_cache, score_rows
from jaxicl.io.results import write_json_atomic
from jaxicl.models.config import ModelConfig
from jaxicl.models.init import init_params, param_shapes
from jaxicl.runtime import compile_cache

MODELS = ("gemma3-270m", "xglm-1.3b")
DTYPES = {"fp32": jnp.float32, "bf16": jnp.bfloat16}
COMPUTE_DTYPE = {"fp32": "float32", "bf16": "bfloat16"}
XLA_AGREEMENT = 0.25  # XLA's flop count is used when within this relative distance of the analytic one

# Dense (no sparsity) peak TFLOP/s. Matched in order on a lower-cased substring of device_kind.
PEAKS: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("h100 pcie", "NVIDIA H100 PCIe", {"bf16": 756.0, "tf32": 378.0, "fp32": 51.0}),
    ("h100", "NVIDIA H100 SXM", {"bf16": 989.0, "tf32": 495.0, "fp32": 67.0}),
    ("h200", "NVIDIA H200 (H100 SXM compute)", {"bf16": 989.0, "tf32": 495.0, "fp32": 67.0}),
    ("a100", "NVIDIA A100", {"bf16": 312.0, "tf32": 156.0, "fp32": 19.5}),
    ("tpu v4", "TPU v4", {"bf16": 275.0}),
    ("tpu v5 lite", "TPU v5e", {"bf16": 197.0}),
    ("tpu v5e", "TPU v5e", {"bf16": 197.0}),
)
STRICT_FP32 = ("highest", "float32")  # jax_default_matmul_precision values that rule out TF32


# --- configs -------------------------------------------------------------------------------------


def gemma3_270m(tiny: bool = False) -> ModelConfig:
    """Gemma 3 270M exactly as its GGUF file configures it (tiny: same knobs, toy sizes)."""
    if tiny:
        sizes = dict(vocab_size=512, d_model=64, n_layers=6, n_heads=4, n_kv_heads=1, head_dim=16, d_ff=128,
                     sliding_window=16, max_positions=1024)  # fmt: skip
    else:
        sizes = dict(vocab_size=262144, d_model=640, n_layers=18, n_heads=4, n_kv_heads=1, head_dim=256, d_ff=2048,
                     sliding_window=512, max_positions=32768)  # fmt: skip
    n = sizes["n_layers"]
    return ModelConfig(
        family="gemma3", **sizes, norm_kind="rms", norm_eps=float(np.float32(1e-6)),  # as the GGUF stores it
        norm_plus_one=True,
        position_kind="rope", rope_base=1e6, rope_local_base=1e4,
        layer_is_local=tuple((i + 1) % 6 != 0 for i in range(n)),
        qk_norm=True, post_norms=True, gated_mlp=True, activation="gelu_tanh",
        embed_scale=math.sqrt(sizes["d_model"]), query_scale=sizes["head_dim"] ** -0.5,
        tie_embeddings=True, bos_token_id=2, eos_token_id=1, pad_token_id=0, add_bos=True,
    )  # fmt: skip


def xglm_1_3b(tiny: bool = False) -> ModelConfig:
    """The paper's fairseq dense 1.3B, as its HF port KoboldAI/fairseq-dense-1.3B (tiny: toy sizes)."""
    if tiny:
        sizes = dict(vocab_size=512, d_model=64, n_layers=2, n_heads=4, n_kv_heads=4, head_dim=16, d_ff=256,
                     max_positions=256)  # fmt: skip
    else:
        sizes = dict(vocab_size=50261, d_model=2048, n_layers=24, n_heads=32, n_kv_heads=32, head_dim=64,
                     d_ff=8192, max_positions=2048)  # fmt: skip
    return ModelConfig(
        family="xglm", **sizes, norm_kind="layer", norm_eps=1e-5, position_kind="sinusoidal", position_offset=2,
        attn_bias=True, mlp_bias=True, gated_mlp=False, activation="gelu",
        embed_scale=math.sqrt(sizes["d_model"]), tie_embeddings=True,
        bos_token_id=2, eos_token_id=2, pad_token_id=1, add_bos=True,
    )  # fmt: skip


CONFIGS = {"gemma3-270m": gemma3_270m, "xglm-1.3b": xglm_1_3b}


def model_config(name: str, tiny: bool = False) -> ModelConfig:
    return CONFIGS[name](tiny)


def n_params(config: ModelConfig) -> int:
    return int(sum(math.prod(s) for s in jax.tree.leaves(param_shapes(config), is_leaf=lambda x: isinstance(x, tuple))))


# --- FLOPs ---------------------------------------------------------------------------------------


def _bucket(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def block_matmul_params(config: ModelConfig) -> int:
    """Weights of one block's matmuls (W in the docstring)."""
    d, q, kv = config.d_model, config.n_heads * config.head_dim, config.n_kv_heads * config.head_dim
    return d * q + 2 * d * kv + q * d + (3 if config.gated_mlp else 2) * d * config.d_ff


def forward_flops(config: ModelConfig, rows: int, tokens: int, keys: int, logit_positions: int) -> float:
    """Analytic matmul FLOPs of one forward (docstring formula)."""
    per_layer = 2 * rows * tokens * block_matmul_params(config)
    per_layer += 4 * rows * tokens * keys * config.n_heads * config.head_dim
    return float(config.n_layers * per_layer + 2 * config.d_model * config.vocab_size * logit_positions)


def icl_flops(config: ModelConfig, prefix_len: int, row_len: int, n_rows: int, batch: int) -> float:
    """The whole `evaluate` call: padded prefix once, then ceil(n_rows / batch) full batches."""
    p = _bucket(prefix_len, 64) if prefix_len else 0
    t = _bucket(row_len, EvalOptions().length_multiple)
    prefix = forward_flops(config, 1, p, p, 0) if p else 0.0
    return prefix + math.ceil(n_rows / batch) * forward_flops(config, batch, t, p + t, batch)


def step_flops(config: ModelConfig, demo_len: int, method: str, length_multiple: int) -> float:
    t = _bucket(demo_len, length_multiple)
    readouts = t * (config.n_layers if method == "lcgd" else 1)
    return 3.0 * forward_flops(config, 1, t, t, readouts)


def xla_flops(lowered) -> float | None:
    """flops of a lowered computation from XLA's cost analysis, or None where unavailable."""
    try:
        cost = lowered.cost_analysis()
    except Exception:  # noqa: BLE001 - not every backend/version implements it
        return None
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else None
    flops = (cost or {}).get("flops")
    return float(flops) if flops and math.isfinite(flops) and flops > 0 else None


def choose_flops(analytic: float, xla: float | None) -> tuple[float, str]:
    if xla is not None and abs(xla / analytic - 1.0) <= XLA_AGREEMENT:
        return xla, "xla"
    return analytic, "analytic"


def _icl_xla_flops(params, config, prefix_len, row_len, n_rows, batch, taps) -> float | None:
    """XLA's count for prefix_cache + batches × score_rows, from lowering with abstract inputs."""
    try:
        p = _bucket(prefix_len, 64)
        t = _bucket(row_len, EvalOptions().length_multiple)
        ids = jax.ShapeDtypeStruct((1, p), jnp.int32)
        valid = jax.ShapeDtypeStruct((1, p), jnp.bool_)
        pre = xla_flops(prefix_cache.lower(params, config, ids, valid))
        cache = jax.eval_shape(lambda i, v: prefix_cache(params, config, i, v), ids, valid)
        i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32)  # noqa: E731
        args = (i32(batch, t), jax.ShapeDtypeStruct((batch, t), jnp.bool_), i32(batch), i32(batch, 1),
                i32(batch, 1, 2), jax.ShapeDtypeStruct((batch, 1), jnp.float32))  # fmt: skip
        rows = xla_flops(score_rows.lower(params, config, taps, cache, *args))
    except Exception:  # noqa: BLE001 - the count is optional; the analytic one stands in
        return None
    if pre is None or rows is None:
        return None
    return pre + math.ceil(n_rows / batch) * rows


def _step_xla_flops(params, config, options, demo_len) -> float | None:
    """XLA's count of one `train_step`; uses finetune's private step plumbing, so any change
    there just falls back to the analytic count."""
    try:
        from jaxicl.engine import finetune as ft
        from jaxicl.engine import transforms as T
        from jaxicl.engine.finetune.demos import to_device_batch

        mask = T.kv_mask(config)
        spec = ft.StepSpec.of(options)
        trainable, frozen = T.split_params(params, mask.paths)
        opt_state = ft.optimizer(spec, options.lr).init(trainable)
        seq = list(range(3, 3 + demo_len))
        batch = to_device_batch([ft.demo_arrays(seq, None, "all", _bucket(demo_len, options.length_multiple))])
        lowered = ft.train_step.lower(
            trainable, opt_state, frozen, batch, jnp.float32(options.lr), True, config=config, spec=spec, mask=mask
        )
        return xla_flops(lowered)
    except Exception:  # noqa: BLE001
        return None


# --- peak ----------------------------------------------------------------------------------------


def matmul_precision() -> str | None:
    """jax_default_matmul_precision (None: XLA's default)."""
    try:
        return jax.config.jax_default_matmul_precision
    except AttributeError:  # a jax whose config no longer exposes flags as attributes
        return getattr(jax.config, "values", {}).get("jax_default_matmul_precision")


def device_peak(device_kind: str, dtype: str, platform_name: str) -> tuple[float | None, str]:
    """(peak dense TFLOP/s or None, basis) for this device kind and row dtype."""
    kind = device_kind.lower()
    for key, name, peaks in PEAKS:
        if key in kind:
            break
    else:
        return None, "unknown"
    if dtype == "bf16":
        return peaks["bf16"], f"{name} bf16"
    precision = str(matmul_precision() or "default").lower()
    if platform_name == "tpu":
        return peaks["bf16"], f"{name} bf16 (fp32 at default precision is one bf16 pass)"
    if precision in STRICT_FP32:
        return peaks["fp32"], f"{name} fp32 (matmul precision {precision})"
    return peaks["tf32"], f"{name} tf32 (matmul precision {precision}: XLA may use TF32)"


# --- workloads -----------------------------------------------------------------------------------


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    jax.block_until_ready(out)
    return time.perf_counter() - start, out


def _random_ids(rng: np.random.Generator, config: ModelConfig, n: int) -> list[int]:
    return rng.integers(3, config.vocab_size, size=n).tolist()


def bench_icl(params, config: ModelConfig, args, rng, batch: int | None = None, key: str = "icl") -> dict:
    """ICL scoring throughput at `batch` rows per batch (default --batch-size); keys start with `key`."""
    batch = batch or args.batch_size
    prefix = [config.bos_token_id] + _random_ids(rng, config, args.prefix_tokens - 1)
    spread = max(1, args.query_tokens // 10)
    queries = [_random_ids(rng, config, int(rng.integers(args.query_tokens - spread, args.query_tokens + spread + 1)))
               for _ in range(max(args.queries, batch))]  # fmt: skip
    candidates = [[int(c)] for c in rng.choice(np.arange(3, config.vocab_size), size=2, replace=False)]
    options = EvalOptions(batch_size=batch)
    run = lambda qs: evaluate(params, config, prefix, qs, candidates, options)  # noqa: E731
    first_s, _ = _timed(lambda: run(queries[:batch]).scores)
    times = []
    for _ in range(args.repeats):
        seconds, result = _timed(lambda: run(queries).scores)
        times.append(seconds)
    if not np.all(np.isfinite(result)):
        raise RuntimeError(f"non-finite ICL scores for {config.family}")
    seconds = statistics.median(times)
    row_len = max(len(q) for q in queries) + 1  # + the probe (candidate 0's first token)
    analytic = icl_flops(config, len(prefix), row_len, len(queries), batch)
    xla = _icl_xla_flops(params, config, len(prefix), row_len, len(queries), batch, options.records)
    flops, source = choose_flops(analytic, xla)
    out = {
        "queries": len(queries),
        "batch_size": batch,
        "prefix_tokens": len(prefix),
        "query_tokens_mean": float(np.mean([len(q) for q in queries])),
        "first_call_s": first_s,
        "seconds": seconds,
        "queries_per_s": len(queries) / seconds,
        "flops": flops,
        "flops_analytic": analytic,
        "flops_xla": xla,
        "flops_source": source,
        "tflops": flops / seconds / 1e12,
    }
    return {f"{key}_{name}": value for name, value in out.items()}


def bench_step(params, config: ModelConfig, dtype: str, method: str, args, rng) -> dict:
    from jaxicl.engine.finetune import METHODS, FinetuneOptions, finetune

    options = FinetuneOptions(lr=1e-3, objective=METHODS[method], compute_dtype=COMPUTE_DTYPE[dtype])
    demos = [[config.bos_token_id] + _random_ids(rng, config, args.demo_tokens - 1) for _ in range(args.steps)]
    first_s, _ = _timed(lambda: finetune(params, config, demos[:1], options).losses)
    times = []
    for _ in range(args.repeats):
        seconds, result = _timed(lambda: finetune(params, config, demos, options).losses)
        times.append(seconds / len(demos))
    step_s = statistics.median(times)
    analytic = step_flops(config, args.demo_tokens, method, options.length_multiple)
    xla = _step_xla_flops(params, config, options, args.demo_tokens)
    flops, source = choose_flops(analytic, xla)
    return {
        f"{method}_first_call_s": first_s,
        f"{method}_step_ms": step_s * 1e3,
        f"{method}_loss": float(result[-1]),
        f"{method}_flops_per_step": flops,
        f"{method}_flops_analytic": analytic,
        f"{method}_flops_xla": xla,
        f"{method}_flops_source": source,
        f"{method}_tflops": flops / step_s / 1e12,
    }


def bench_many(params, config: ModelConfig, dtype: str, method: str, args, rng) -> dict:
    """Demonstration-steps per second of `--runs` runs finetuned at once (`finetune_many`, each run
    one lax.scan, as the runner's batched engine) and of one run alone (`finetune`)."""
    from jaxicl.engine.finetune import METHODS, FinetuneOptions, finetune, finetune_many

    options = FinetuneOptions(lr=1e-3, objective=METHODS[method], compute_dtype=COMPUTE_DTYPE[dtype])
    sets = [[[config.bos_token_id] + _random_ids(rng, config, args.demo_tokens - 1) for _ in range(args.steps)]
            for _ in range(args.runs)]  # fmt: skip
    one = lambda: finetune(params, config, sets[0], options).losses  # noqa: E731
    many = lambda: [r.losses for r in finetune_many(params, config, sets, options, scan=True)]  # noqa: E731
    first_s, _ = _timed(many)
    _timed(one)  # compiled by bench_step already for these shapes; warm anyway
    one_s = statistics.median(_timed(one)[0] for _ in range(args.repeats))
    many_s = statistics.median(_timed(many)[0] for _ in range(args.repeats))
    one_rate, many_rate = args.steps / one_s, args.runs * args.steps / many_s
    return {
        f"{method}_many_runs": args.runs,
        f"{method}_many_first_call_s": first_s,
        f"{method}_one_steps_per_s": one_rate,
        f"{method}_many_steps_per_s": many_rate,
        f"{method}_many_speedup": many_rate / one_rate,
    }


def run_row(name: str, config: ModelConfig, dtype: str, params, args, device) -> dict:
    rng = np.random.default_rng(args.seed)
    row = {"model": name, "dtype": dtype, "params_m": n_params(config) / 1e6}
    row.update(bench_icl(params, config, args, rng))
    row.update(bench_icl(params, config, args, rng, batch=args.big_batch, key="icl_big"))
    for method in ("gd", "lcgd"):
        row.update(bench_step(params, config, dtype, method, args, rng))
        row.update(bench_many(params, config, dtype, method, args, rng))
    peak, basis = device_peak(device.device_kind, dtype, device.platform)
    row["peak_tflops"] = peak
    row["peak_basis"] = basis
    for work in ("icl", "icl_big", "gd", "lcgd"):
        row[f"{work}_pct_peak"] = 100.0 * row[f"{work}_tflops"] / peak if peak else None
    return row


# --- output --------------------------------------------------------------------------------------


def _fmt(x, digits: int = 1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(rows: list[dict]) -> str:
    head = ("| model | dtype | ICL queries/s | ICL first-call s | GD step ms | LCGD step ms | GD / LCGD first-call s "
            "| TFLOP/s ICL / GD / LCGD | % of peak ICL / GD / LCGD | ICL at batch B: queries/s, % of peak "
            "| N runs at once: GD / LCGD steps/s (x one run) |")  # fmt: skip
    lines = [head, "|" + "---|" * 11]
    for r in rows:
        tflops = " / ".join(_fmt(r[f"{w}_tflops"], 2) for w in ("icl", "gd", "lcgd"))
        pct = " / ".join(_fmt(r[f"{w}_pct_peak"]) for w in ("icl", "gd", "lcgd"))
        many = " / ".join(f"{_fmt(r[f'{m}_many_steps_per_s'])} ({_fmt(r[f'{m}_many_speedup'])}x)" for m in ("gd", "lcgd"))
        lines.append(
            f"| {r['model']} | {r['dtype']} | {_fmt(r['icl_queries_per_s'])} | {_fmt(r['icl_first_call_s'], 2)} "
            f"| {_fmt(r['gd_step_ms'], 2)} | {_fmt(r['lcgd_step_ms'], 2)} "
            f"| {_fmt(r['gd_first_call_s'], 2)} / {_fmt(r['lcgd_first_call_s'], 2)} | {tflops} | {pct} "
            f"| B={r['icl_big_batch_size']}: {_fmt(r['icl_big_queries_per_s'])}, {_fmt(r['icl_big_pct_peak'])} "
            f"| N={r['gd_many_runs']}: {many} |"
        )
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------

FULL = dict(queries=512, batch_size=16, prefix_tokens=600, query_tokens=40, demo_tokens=64, steps=8, repeats=3,
            big_batch=256, runs=18)  # fmt: skip
TINY = dict(queries=8, batch_size=4, prefix_tokens=60, query_tokens=10, demo_tokens=16, steps=2, repeats=1,
            big_batch=8, runs=3)  # fmt: skip


def _list(choices):
    def parse(text: str) -> list[str]:
        items = [s.strip() for s in text.split(",") if s.strip()]
        bad = [s for s in items if s not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma-separated); got {text!r}")
        return items

    return parse


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tiny", action="store_true", help="tiny configs and workload (CPU, seconds)")
    parser.add_argument("--out", help="also write the numbers as JSON here (atomic)")
    parser.add_argument("--compile-cache", metavar="DIR", help="persistent XLA compilation cache directory")
    parser.add_argument("--models", type=_list(MODELS), default=list(MODELS), help=f"default: {','.join(MODELS)}")
    parser.add_argument("--dtypes", type=_list(tuple(DTYPES)), default=list(DTYPES), help="default: fp32,bf16")
    for key, value in FULL.items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=int, default=None,
                            help=f"default {value} ({TINY[key]} with --tiny)")  # fmt: skip
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for key, value in (TINY if args.tiny else FULL).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
        if getattr(args, key) < 1:
            parser.error(f"--{key.replace('_', '-')} must be >= 1")
    if args.prefix_tokens < 2 or args.demo_tokens < 2 or args.query_tokens < 2:
        parser.error("--prefix-tokens, --query-tokens and --demo-tokens must be >= 2")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    cache_dir = str(compile_cache.enable(args.compile_cache)) if args.compile_cache else None
    device = jax.devices()[0]
    print(f"device: {device.device_kind} ({device.platform}, {jax.device_count()} device(s)); jax {jax.__version__}; "
          f"matmul precision {matmul_precision() or 'default'}", flush=True)  # fmt: skip
    rows: list[dict] = []

    def payload(complete: bool) -> dict:
        return {
            "device": {"kind": device.device_kind, "platform": device.platform, "count": jax.device_count()},
            "jax": jax.__version__,
            "python": platform.python_version(),
            "matmul_precision": matmul_precision(),
            "tiny": args.tiny,
            "compile_cache": cache_dir,
            "settings": {k: getattr(args, k) for k in ("models", "dtypes", "seed", *FULL)},
            "configs": {name: dataclasses.asdict(model_config(name, args.tiny)) for name in args.models},
            "rows": rows,
            "complete": complete,  # False in the file written after each row, should a run be cut short
            "total_s": time.perf_counter() - start,
        }

    for name in args.models:
        config = model_config(name, args.tiny)
        t0 = time.perf_counter()
        base = jax.block_until_ready(init_params(config, jax.random.PRNGKey(args.seed), jnp.float32))
        init_s = time.perf_counter() - t0
        for dtype in args.dtypes:
            params = base if dtype == "fp32" else jax.tree.map(lambda x: x.astype(DTYPES[dtype]), base)
            t0 = time.perf_counter()
            row = run_row(name, config, dtype, params, args, device)
            row["init_s"] = init_s
            row["row_s"] = time.perf_counter() - t0
            rows.append(row)
            print(f"  {name} {dtype}: {row['row_s']:.1f} s (first calls: ICL {row['icl_first_call_s']:.1f} s, "
                  f"GD {row['gd_first_call_s']:.1f} s, LCGD {row['lcgd_first_call_s']:.1f} s)", flush=True)  # fmt: skip
            if args.out:
                write_json_atomic(args.out, payload(complete=False))
            del params
        del base
    result = payload(complete=True)
    total = result["total_s"]
    print()
    print(f"device: {device.device_kind}" + (f"; compile cache: {cache_dir}" if cache_dir else ""))
    print(table(rows))
    print("\npeak basis: " + "; ".join(sorted({f"{r['dtype']}: {r['peak_basis']}" for r in rows})))
    print(f"total {total:.1f} s")
    if args.out:
        write_json_atomic(args.out, result)
        print(f"wrote {os.path.abspath(args.out)}")
    return result


if __name__ == "__main__":
    main()
