#!/usr/bin/env bash
# Run benchmarks/ablation.py on a machine that has python3 + numpy + torch (a GPU box) but no dcpnas
# install: lays the package out under /tmp, runs a tiny CUDA smoke piece first (stops there if it fails),
# then the ablation with the arguments given, copying OUT_DIR/ablation.tgz (pieces, report, each run's
# genotype and metrics) every 20 s so that a run cut short still leaves its finished pieces.
# Usage: bash benchmarks/ablation_remote.sh OUT_DIR SECONDS -o RESULTS --data fashion-mnist:DIR --device cuda ...
set -euo pipefail
out=${1:?usage: ablation_remote.sh OUT_DIR SECONDS ABLATION_ARGS...}
secs=${2:?usage: ablation_remote.sh OUT_DIR SECONDS ABLATION_ARGS...}
shift 2
results=""
prev=""
for a in "$@"; do [ "$prev" = "-o" ] && results=$a; prev=$a; done
[ -n "$results" ] || { echo "give -o RESULTS" >&2; exit 2; }
mkdir -p "$out" "$results"
. benchmarks/remote_lib.sh
remote_pkg /tmp/dcpnas-remote
nvidia-smi -L || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
echo "== smoke piece (tiny budget, /tmp)"
python3 benchmarks/ablation.py -o /tmp/ablation-smoke --rows dcp --seeds 0 --search-budget smoke \
  --search-epochs 1 --train-epochs 2 --train-subset 256 --test-subset 256 --cells 2 --channels 4 \
  --data embedded --device "${SMOKE_DEVICE:-cuda}" 2>&1 | tail -12
pack() {  # each call its own temporary name: the periodic packer and the final one never share a file
  local tmp="$out/.ablation.$BASHPID.tgz"
  tar czf "$tmp" -C "$(dirname "$results")" --exclude='checkpoints' --exclude='*.pt' --exclude='*.png' \
    --exclude='*.lock' "$(basename "$results")" 2>/dev/null && mv "$tmp" "$out/ablation.tgz" || rm -f "$tmp"
}
(while sleep 20; do pack; done) &
packer=$!
echo "== ablation: $*"
set +e
timeout "$secs" python3 benchmarks/ablation.py "$@" > "$out/ablation.log" 2>&1
rc=$?
kill "$packer" 2>/dev/null
wait "$packer" 2>/dev/null
python3 benchmarks/ablation.py "$@" --report-only --quiet  # the table of every finished piece
pack
set -e
tail -30 "$out/ablation.log"
echo "ablation exit $rc (124: stopped at ${secs} s; rerun the same command to resume)"
exit "$rc"
