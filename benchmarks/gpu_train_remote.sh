#!/usr/bin/env bash
# One GPU call for issue 13 on a machine with python3 + numpy + torch but no dcpnas install: the training
# step timed eager vs CUDA graph (benchmarks/train_step.py), then accuracy rows of benchmarks/accuracy.py
# trained in parallel with CUDA graphs (each its own process; the -kd rows distil from the committed
# 12-epoch float twin, benchmarks/results/accuracy-full-12ep/rows/float), then the CUDA tests.
# Everything stops at SECONDS; every row's per-epoch metrics (and the model.pt of finished rows) are packed
# into OUT_DIR/accuracy.tgz every 20 s, so that a run cut short still returns what it did.
#   ROWS: space-separated NAME=ROW:BINARY_EPOCHS:CHANNELS[:STAGE2_LR[:STAGE1_RUNS[:EMA]]] (ROW one of
#   accuracy.py's rows; an empty field takes the default; EMA: --stage2-ema decay, e.g. 0.9995; STAGE1_RUNS: start stage 2 from STAGE1_RUNS/ROW/stage1.pt, e.g. benchmarks/results/accuracy-s2lr/rows,
#   an earlier run of the same recipe: only the stage-2 lr, the EMA and the device may differ, the DATA spec may not: for
#   the committed CPU runs give DATA=fashion-mnist:../shared/data/fashion-mnist, after
#   `mkdir -p ../shared/data && ln -s "$PWD/data/fashion-mnist" ../shared/data/` where only data/ was carried)
# Usage: ROWS="kd16=authors-kd:16:16" bash benchmarks/gpu_train_remote.sh OUT_DIR SECONDS [DATA]
# Dry run on a CPU: DEVICE=cpu TINY=1 ROWS="a=authors-kd:2:4" bash benchmarks/gpu_train_remote.sh /tmp/o 120
set -uo pipefail
out=${1:?usage: gpu_train_remote.sh OUT_DIR SECONDS [DATA]}
secs=${2:?usage: gpu_train_remote.sh OUT_DIR SECONDS [DATA]}
data=${3:-fashion-mnist:data/fashion-mnist}
dev=${DEVICE:-cuda}
rows=${ROWS:-kd16=authors-kd:16:16}
work=${WORK:-/tmp/gpu-train}
start=$(date +%s)
mkdir -p "$out" "$work"
. benchmarks/remote_lib.sh
remote_pkg "$work"
nvidia-smi -L 2>/dev/null || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if [ "$dev" = cuda ]; then
  echo "== training step, eager vs CUDA graph"
  timeout 120 python3 benchmarks/train_step.py --device cuda --steps 30 --rounds 3 --json > "$out/train_step.json" \
    2> "$work/train_step.err"; cat "$out/train_step.json" "$work/train_step.err" | tail -25
  timeout 120 python3 benchmarks/train_step.py --device cuda --steps 30 --rounds 3 --distilled --json \
    > "$out/train_step_kd.json" 2>> "$work/train_step.err"; tail -8 "$out/train_step_kd.json"
fi

if [ -n "${TINY:-}" ]; then budget=(--float-epochs 1 --train-subset 300 --test-subset 200); else budget=(--float-epochs 6); fi
teacher=benchmarks/results/accuracy-full-12ep/rows/float
pack() {
  local tmp="$out/.accuracy.$BASHPID.tgz"
  tar czf "$tmp" -C "$work" --exclude='checkpoint.pt' --exclude='*.lock' results runs $(cd "$work" && ls *.log 2>/dev/null) \
    2>/dev/null
  [ -s "$tmp" ] && mv "$tmp" "$out/accuracy.tgz" || rm -f "$tmp"
}
set -m  # every background job its own process group: the deadline stops each job with all its children
pids=()
for spec in $rows; do
  name=${spec%%=*}; rest=${spec#*=}; IFS=: read -r row epochs ch lr2 s1 ema <<< "$rest"
  extra=(); [ -z "$lr2" ] || extra=(--stage2-lr "$lr2"); [ -z "$s1" ] || extra+=(--stage1-from "$s1")
  [ -z "$ema" ] || extra+=(--stage2-ema "$ema")
  runs=$work/runs/$name
  mkdir -p "$runs"
  # the teacher, finished (6 epochs, 16 channels, 92.64 %); a rerun keeps the copy it has
  [ -n "${TINY:-}" ] || [ -e "$runs/float" ] || cp -r "$teacher" "$runs/float"
  python3 benchmarks/accuracy.py -o "$work/results/$name" --runs "$runs" --rows "float,$row" \
    --genotype DDPNAS_MCN_2 --data "$data" --cells 4 --channels "$ch" --reductions 0,2 --binary-epochs "$epochs" \
    --stage1-fraction 0.34 --batch-size 64 --lr 0.005 --seed 0 --threads 1 --device "$dev" "${budget[@]}" "${extra[@]}" \
    > "$work/$name.log" 2>&1 & pids+=($!)
done
(while sleep 20; do pack; done) & packer=$!
set +m
# killed from outside before the deadline: take the rows and the packer along (each is its own group)
trap 'for p in "${pids[@]}" "$packer"; do kill -- "-$p" 2>/dev/null; done' INT TERM
if [ "$dev" = cuda ]; then
  echo "== CUDA tests (beside the rows)"
  timeout 240 python3 -m pytest -q -p no:cacheprovider tests/test_cuda_graph.py 2>&1 | tail -15
fi
remote_deadline "$start" "$secs" "${pids[@]}"
kill -- "-$packer" 2>/dev/null
wait 2>/dev/null
pack
for f in "$work"/*.log; do echo "== $f"; grep -E "epoch|test accuracy|Error|error" "$f" | tail -24; done
echo "elapsed $(( $(date +%s) - start )) s"
ls -la "$out"
