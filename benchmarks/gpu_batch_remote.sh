#!/usr/bin/env bash
# One GPU call for issues 13 and 12, on a machine with python3 + numpy + torch but no dcpnas install:
#   1. the accuracy recipe of benchmarks/accuracy.py at 12 binary epochs on full Fashion-MNIST, 16 channels
#      (rows float, authors, authors-kd, book, book-kd) and 32 channels (float, authors, authors-kd), every
#      row its own process (a -kd row waits for its float teacher);
#   2. the paired ablation (benchmarks/ablation.py, the CPU run's budget) with ABL_WORKERS workers.
# Everything stops after SECONDS; finished rows/pieces and every row's per-epoch metrics are packed into
# OUT_DIR/accuracy.tgz and OUT_DIR/ablation.tgz every 20 s (so a run cut short still returns what it did).
# Usage: bash benchmarks/gpu_batch_remote.sh OUT_DIR SECONDS [DATA]
# Dry run on a CPU (tiny budget): DEVICE=cpu TINY=1 bash benchmarks/gpu_batch_remote.sh /tmp/o 120
set -uo pipefail
out=${1:?usage: gpu_batch_remote.sh OUT_DIR SECONDS [DATA]}
secs=${2:?usage: gpu_batch_remote.sh OUT_DIR SECONDS [DATA]}
data=${3:-fashion-mnist:data/fashion-mnist}
dev=${DEVICE:-cuda}
work=${WORK:-/tmp/gpu-batch}
mkdir -p "$out" "$work"
. benchmarks/remote_lib.sh
remote_pkg "$work"
nvidia-smi -L 2>/dev/null || true
python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"

if [ -n "${TINY:-}" ]; then
  budget=(--float-epochs 1 --binary-epochs 2 --train-subset 300 --test-subset 200)
  abl=(--seeds 0 --rows dcp random --train-seeds 0 --train-epochs 1 --train-subset 200 --search-budget smoke)
else
  budget=(--float-epochs 6 --binary-epochs 12)
  abl=(--seeds 0 1 2 3 --train-seeds 0 1 --train-epochs 4 --train-subset 6000)
fi
acc_out=$work/results/accuracy-full-12ep-gpu
abl_out=$work/results/ablation-paired-gpu
common=(--genotype DDPNAS_MCN_2 --data "$data" --cells 4 --reductions 0,2 --stage1-fraction 0.34
        --batch-size 64 --lr 0.005 --seed 0 --threads 1 --device "$dev" "${budget[@]}")
acc() {  # acc CHANNELS ROWS: one process training ROWS in order (a -kd row first waits for the float row)
  local ch=$1 rows=$2 runs=$work/runs/acc$1
  case $rows in *-kd*) [ "${rows%%,*}" = float ] || until [ -f "$runs/float/train.json" ]; do sleep 5; done ;; esac
  python3 benchmarks/accuracy.py -o "$acc_out/c$ch" --runs "$runs" --channels "$ch" --rows "$rows" "${common[@]}" \
    > "$work/acc$ch-${rows//,/+}.log" 2>&1
}
pack() {  # each call its own temporary name
  for what in accuracy ablation; do
    local tmp="$out/.$what.$BASHPID.tgz"
    if [ $what = accuracy ]; then
      tar czf "$tmp" -C "$work" --exclude='checkpoint.pt' --exclude='*.lock' results/accuracy-full-12ep-gpu \
        runs $(cd "$work" && ls *.log 2>/dev/null) 2>/dev/null
    else
      tar czf "$tmp" -C "$work/results" --exclude='checkpoints' --exclude='*.pt' --exclude='*.lock' \
        ablation-paired-gpu 2>/dev/null
    fi
    [ -s "$tmp" ] && mv "$tmp" "$out/$what.tgz" || rm -f "$tmp"
  done
}
start=$(date +%s)
set -m  # every background job its own process group: the deadline stops each job with all its children
pids=()
acc 16 float,authors-kd & pids+=($!)
acc 16 authors & pids+=($!)
acc 16 book & pids+=($!)
acc 16 book-kd & pids+=($!)
acc 32 float,authors-kd & pids+=($!)
acc 32 authors & pids+=($!)
python3 benchmarks/ablation.py -o "$abl_out" --data "$data" "${abl[@]}" --threads 1 \
  --workers "${ABL_WORKERS:-6}" --device "$dev" > "$work/ablation.log" 2>&1 & pids+=($!)
(while sleep 20; do pack; done) & packer=$!
set +m
# the deadline: rows and pieces resume from their checkpoints on a rerun
remote_deadline "$start" "$secs" "${pids[@]}"
kill -- "-$packer" 2>/dev/null
wait 2>/dev/null
python3 benchmarks/ablation.py -o "$abl_out" --data "$data" "${abl[@]}" --report-only --quiet
pack
tail -n 5 "$work"/*.log
echo "elapsed $(( $(date +%s) - start )) s"
ls -la "$out"
