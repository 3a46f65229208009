"""Forward time for one ~600-token prompt: jaxicl vs transformers (PyTorch), side by side in one run.

Also load time and peak RSS of `jaxicl.load("gemma3-270m")`, first (empty cache) and cached,
each measured in a fresh subprocess so RSS is the load's own.

    python experiments/bench_forward.py [--model gemma3-270m] [--tokens 600] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

LOAD_SNIPPET = """
import json, resource, time, jaxicl
t = time.perf_counter(); lm = jaxicl.load({model!r}); dt = time.perf_counter() - t
print(json.dumps({{"seconds": dt, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def measure_load(model: str, cache: str) -> dict:
    env = dict(os.environ, JAXICL_CACHE=cache)
    out = subprocess.run(
        [sys.executable, "-c", LOAD_SNIPPET.format(model=model)], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def prompt_of_length(tokenizer, n_tokens: int) -> list[int]:
    """Real text (SST-2 style sentences) cut to exactly n_tokens ids, BOS first when the family uses one."""
    text = " ".join(
        f"Sentence: the film is {w} and the acting is {v}. Label: Positive"
        for w, v in zip(["warm", "dull", "sharp", "long", "brave"] * 40, ["fine", "flat", "great", "odd", "bold"] * 40)
    )
    ids = tokenizer.prompt_ids(text)
    assert len(ids) >= n_tokens
    return ids[:n_tokens]


def time_it(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="gemma3-270m")
    parser.add_argument("--tokens", type=int, default=600)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as cache:
        first = measure_load(args.model, cache)
        cached = measure_load(args.model, cache)

    import jax
    import torch
    import transformers

    import jaxicl
    from jaxicl.io import registry

    torch.set_num_threads(os.cpu_count() or 1)
    lm = jaxicl.load(args.model)
    ids = prompt_of_length(lm.tokenizer, args.tokens)
    path = registry.resolve(args.model)
    ref = transformers.AutoModelForCausalLM.from_pretrained(
        str(path.parent), gguf_file=path.name, torch_dtype=torch.float32
    ).eval()

    t = time.perf_counter()
    jaxicl.logits(lm, ids, add_bos=False)
    compile_s = time.perf_counter() - t
    ours = time_it(lambda: jaxicl.logits(lm, ids, add_bos=False), args.repeats)
    x = torch.tensor([ids])
    with torch.no_grad():
        ref(x)
        theirs = time_it(lambda: ref(x).logits.numpy(), args.repeats)

    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__} "
          f"({jax.devices()[0].platform}), torch {torch.__version__}, transformers {transformers.__version__}")
    print(f"model: {args.model}  prompt: {len(ids)} tokens, logits at every position, fp32")
    print(f"load (empty cache): {first['seconds']:.1f} s, peak RSS {first['peak_rss_mb']:.0f} MB")
    print(f"load (cached):      {cached['seconds']:.1f} s, peak RSS {cached['peak_rss_mb']:.0f} MB")
    print(f"jaxicl first call (compile + run): {compile_s:.2f} s")
    print(f"forward  jaxicl: {ours * 1e3:.0f} ms   transformers: {theirs * 1e3:.0f} ms   "
          f"ratio (transformers / jaxicl): {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
