# Sourced by the *_remote.sh scripts, which run on a GPU box with python3 + torch but no dcpnas install.
# Run from the repository root:   . benchmarks/remote_lib.sh

# remote_pkg WORK: lay the package out as installed (compiler/, targets/, cli/ inside dcpnas/) under
# WORK/pkg, install the wheels carried in .whl/ (pure-Python needs such a box may lack: tomli_w) into
# WORK/site, and put both on PYTHONPATH.
remote_pkg() {
  local work=${1:?remote_pkg WORK}
  rm -rf "$work/pkg" && mkdir -p "$work/pkg/dcpnas"
  cp -r dcpnas/. "$work/pkg/dcpnas/"
  for sub in compiler targets cli; do cp -r "$sub" "$work/pkg/dcpnas/$sub"; done
  export PYTHONPATH="$work/pkg${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
  if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$work/site" .whl/*.whl
    export PYTHONPATH="$PYTHONPATH:$work/site"
  fi
}

# remote_deadline START SECS PID...: wait until every job PID (each its own process group: start them
# under `set -m`) has ended or SECS seconds have passed since START (epoch seconds), then stop what is
# left, children included. The jobs resume from their checkpoints on a rerun.
remote_deadline() {
  local start=$1 secs=$2 p alive
  shift 2
  while [ $(( $(date +%s) - start )) -lt "$secs" ]; do
    alive=0; for p in "$@"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ $alive = 1 ] || break
    sleep 2
  done
  for p in "$@"; do kill -TERM -- "-$p" 2>/dev/null && echo "deadline: stopped job $p"; done
  sleep 2
  for p in "$@"; do kill -KILL -- "-$p" 2>/dev/null || true; done
  return 0
}
