#!/usr/bin/env bash
# The stability check (`jaxicl run --stability-check`) on the committed gemma3-270m grids, each in its own
# resumable run directory under OUT (default runs/stability); rerun the same command to resume.
#   A: the trained model at the selected rates, first run per task (GD and LCGD)
#   B: the trained model at the paper's rates, three runs per task (GD and LCGD)
#   C: Table 1's untrained variants at the paper's rates (GD)
# Then `jaxicl report OUT/<grid>` for each. On this project's 2-core CPU, A takes about 1.2 h, B 3.6 h, C 1.9 h.
# The datasets come from $JAXICL_DATA_DIR (else the Hub), as for the committed grids, so the run
# directories' configs match theirs; the cells committed under docs/results/stability/ can be
# copied into OUT/<grid>/cells to skip them.
set -euo pipefail
out="${1:-runs/stability}"
common=(--stability-check)
jaxicl run --out "$out/selected" --lrs docs/results/selected_rates/lr_selection_gd.json --n-runs 1 "${common[@]}"
jaxicl run --out "$out/paper" --variants trained "${common[@]}"
jaxicl run --out "$out/untrained" --variants trained-embeddings,no-training --methods gd "${common[@]}"
for grid in selected paper untrained; do jaxicl report "$out/$grid"; done
