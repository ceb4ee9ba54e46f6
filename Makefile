# HeteroTrain — the two commands a user needs are `make demo` and `make test`.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   ?= .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CLUSTER_DIR ?= .cluster
SOAK_ARGS ?=
TEST_LOGS ?= .test-logs
UNIT_NICE ?= 5
export PATH := $(PATH):/usr/local/go/bin

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

# The product (editable, with its dev tools) and, next to it, the test infrastructure (e2e/pyproject.toml).
$(STAMP): pyproject.toml e2e/pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q --upgrade pip setuptools wheel
	$(VPY) -m pip install -q -e '.[dev]' -e ./e2e
	@touch $@

venv: $(STAMP) ## create .venv with the project, its dev tools and the test infrastructure

toolchain: $(STAMP) ## build (or find cached) kube-apiserver, etcd, scheduler, controller-manager, kubectl, kwok, helm
	$(VPY) -m heterotrain_e2e.cluster build

cluster-up: $(STAMP) ## start the local control plane with heterogeneous node pools (.cluster/)
	$(VPY) -m heterotrain_e2e.cluster up --dir $(CLUSTER_DIR)

cluster-down: $(STAMP) ## stop everything cluster-up started
	$(VPY) -m heterotrain_e2e.cluster down --dir $(CLUSTER_DIR)

cluster-status: $(STAMP)
	$(VPY) -m heterotrain_e2e.cluster status --dir $(CLUSTER_DIR)

crds: $(STAMP) ## regenerate the CRD (crds/ and the chart's copy) from the pydantic types
	$(VPY) -m heterotrain_api.crdgen

verify: $(STAMP) ## lint, types (strict, all of operator/ and runtime/), layer contracts, sizes, generated files in sync
	$(VPY) -m ruff check .
	$(VPY) -m ruff format --check .
	$(VPY) -m mypy --config-file pyproject.toml operator runtime
	$(VPY) .ci/check_sizes.py operator runtime
	$(VENV)/bin/lint-imports --config pyproject.toml
	$(VPY) -m heterotrain_api.crdgen --check

unit: $(STAMP) ## unit tests only (no cluster)
	$(VPY) -m pytest tests -q

# The unit tests run beside the e2e tests, at a lower CPU priority: the e2e tests wait on the control plane
# much of the time, and their training pods keep their emulated speeds.  The unit tests' output follows.
test: verify toolchain ## verify, then unit tests beside the e2e tests (the e2e suite starts its own real control plane)
	@mkdir -p $(TEST_LOGS) && rm -f $(TEST_LOGS)/unit.rc
	@echo "unit tests: running beside the e2e tests (nice $(UNIT_NICE)); their output follows the e2e tests'"
	@( nice -n $(UNIT_NICE) $(VPY) -m pytest tests -q -p no:cacheprovider >$(TEST_LOGS)/unit.log 2>&1; \
	   echo $$? >$(TEST_LOGS)/unit.rc ) & \
	e2e=0; $(VPY) -m pytest e2e/tests -q -p no:cacheprovider || e2e=$$?; \
	wait; echo "=== unit tests (tests/) ==="; cat $(TEST_LOGS)/unit.log; unit=$$(cat $(TEST_LOGS)/unit.rc); \
	echo "e2e tests: exit $$e2e; unit tests: exit $$unit"; test "$$e2e" = 0 && test "$$unit" = 0

dev-operator: $(STAMP) ## install the CRDs and run the operator in the foreground against $$KUBECONFIG
	@test -n "$${KUBECONFIG:-}" || { echo "KUBECONFIG is not set (try: export KUBECONFIG=$(CURDIR)/$(CLUSTER_DIR)/kubeconfig)"; exit 1; }
	$(VPY) -m heterotrain_operator dev

demo: $(STAMP) ## start the local cluster (unless KUBECONFIG is set), the operator, and the quickstart job
	$(VPY) -m heterotrain_e2e.demo --cluster-dir $(CLUSTER_DIR)

bench-placement: $(STAMP) ## placement benchmark -> benchmarks/results/placement.json
	$(VPY) benchmarks/placement/run.py

bench-runtime: $(STAMP) ## runtime benchmark -> benchmarks/results/runtime.json
	$(VPY) benchmarks/runtime/run.py

bench-faults: $(STAMP) toolchain ## failures through the operator on the local cluster vs torchrun (same run), ETTR -> benchmarks/results/faults.json
	$(VPY) benchmarks/faults/run.py

soak: $(STAMP) toolchain ## 1,000 kwok nodes, 200 jobs: nothing deleted, created or re-formed while the cluster is quiet -> benchmarks/results/soak.json (SOAK_ARGS="--jobs-file F --seed N" for your own mix)
	$(VPY) -m heterotrain_e2e.soak $(SOAK_ARGS)

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache

.PHONY: help venv toolchain cluster-up cluster-down cluster-status crds verify unit test dev-operator demo bench-placement bench-runtime bench-faults soak clean
