# The two set-up commands of README.md: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv demo test system-deps arm-runtime clean

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# apt packages for the arm tests (cross compiler + qemu-user); skipped quietly without root/apt.
system-deps:
	bash scripts/install_system_deps.sh

# The main job (README): search -> train -> compile (trained weights, accuracy as compiled) -> bench ->
# summary (runs/demo/summary.json). Every step resumes or rebuilds, so `make demo` can be rerun.
# Search and training on every core (`make demo` owns the machine): the search 1.32x faster than at its
# 1-thread default on an idle 2-core host (433 s vs 571 s; the default stays 1 thread because 2 threads
# measured ~5x slower beside another job), training (configs/demo.toml, the 1-bit recipe sized for the
# embedded data on 2 CPU cores) 1.45x.
# Bench at 1 thread, every runtime alike: TVM's 2-thread pool waits on a busy second core (a fresh clone
# beside one other job: 55.9 ms at 2 threads for a network that runs in ~1 ms), and the LUT holds 1-thread figures.
DEMO_TARGET ?= x86-avx512
demo: venv
	$(VENV)/bin/dcpnas search --target $(DEMO_TARGET) -o runs/demo --resume --threads 0
	$(VENV)/bin/dcpnas train runs/demo/genotype.json --config configs/demo.toml --resume
	$(VENV)/bin/dcpnas compile runs/demo/genotype.json -o build/demo-$(DEMO_TARGET)
	$(VENV)/bin/dcpnas bench build/demo-$(DEMO_TARGET) --no-layers --threads 1
	$(VENV)/bin/dcpnas report runs/demo --build build/demo-$(DEMO_TARGET)

# aarch64 TVM runtime for the `arm` tests (cached; the tests skip with a reason without it)
arm-runtime: venv system-deps
	PYTHON=$(PY) bash scripts/setup_arm_runtime.sh || echo "arm runtime setup failed; arm tests will skip"

test: venv system-deps arm-runtime
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) build runs
