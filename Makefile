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

demo: venv
	$(VENV)/bin/dcpnas search --target x86-avx512 -o runs/demo
	$(VENV)/bin/dcpnas compile runs/demo/genotype.json --target x86-avx512 -o build/demo-x86-avx512
	$(VENV)/bin/dcpnas bench build/demo-x86-avx512

# aarch64 TVM runtime + qemu harness for the `arm` tests (cached; the tests skip with a reason without it)
arm-runtime: venv system-deps
	PYTHON=$(PY) bash scripts/setup_arm_runtime.sh || echo "arm runtime setup failed; arm tests will skip"

test: venv system-deps arm-runtime
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) build runs
