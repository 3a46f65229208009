#!/bin/bash
# Issue 14 on the lent GPU: the six-task coarse-to-unimodal tune of gemma3-270m, timed end to end.
# The GGUF arrived in four parts over four calls (in /var/tmp/jx); this assembles and verifies it.
export PYTHONUNBUFFERED=1
J=/var/tmp/jx
set -x
mkdir -p /tmp/site $J/data && tar xJf .gpu/gguf.tar.xz -C /tmp/site && tar xJf $J/data.tar.xz -C $J/data || exit 3
[ -f $J/model.gguf ] || cat $J/p0 $J/p1 $J/p2 $J/p3 > $J/model.gguf
echo "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818  $J/model.gguf" | sha256sum -c || exit 4
export PYTHONPATH=$PWD:/tmp/site JAXICL_DATA_DIR=$J/data
set +x
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv | tee $OUT/machine.txt
python3 - <<'P' 2>&1 | tee -a $OUT/machine.txt
import time, jax, jax.numpy as jnp
print("jax", jax.__version__, jax.devices())
for dtype in (jnp.bfloat16, jnp.float32):
    a = jnp.ones((8192, 8192), dtype) * 0.01
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready(); f(a).block_until_ready()
    t = time.perf_counter(); n = 10
    for _ in range(n): r = f(a)
    r.block_until_ready(); dt = (time.perf_counter() - t) / n
    print(f"matmul 8192^3 {jnp.dtype(dtype).name} (default precision): {2 * 8192**3 / dt / 1e12:.0f} TFLOP/s")
P
date -u +%FT%TZ | tee $OUT/start.txt
/usr/bin/time -v timeout ${TUNE_LIMIT:-510} python3 -m jaxicl.cli tune --model $J/model.gguf --search coarse-to-unimodal \
  --batch-size auto --out $J/tune "$@" > $OUT/tune.log 2>&1
echo "rc=$?" | tee -a $OUT/start.txt; date -u +%FT%TZ | tee -a $OUT/start.txt
tail -40 $OUT/tune.log
cp $J/tune/lr_selection.json $J/tune/tune/timing.json $OUT/ 2>/dev/null
tar czf $OUT/rates.tgz -C $J/tune tune 2>/dev/null
python3 -c "import json;t=json.load(open('$OUT/timing.json'));print({k:(round(sum(v.values()),1) if isinstance(v,dict) else v) for k,v in t.items()})"
