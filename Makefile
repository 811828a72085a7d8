# repx: one entry point from a fresh Debian machine to a running lab.
#
#   make demo    build the example lab and run it end to end
#   make test    run the test suite (starts the 3-node SLURM test cluster first)
#   make slurm-up    start that cluster alone (root; docs/slurm-cluster.md)
#   make ssh-up      start the test sshd alone (root; docs/remote.md)
#   make lint    ruff
#   make bench   the benchmarks, then the table of the issue's targets (QUICK=1: quick sizes)
#   make bench-quick   the same as make bench QUICK=1 (a few minutes)
#
# `setup` is idempotent and cheap when everything is in place: system tools are installed only
# when missing, and the venv is reinstalled only when pyproject.toml is newer than its stamp.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c

PYTHON ?= python3
VENV := .venv
VPY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
NIX_CONF := /etc/nix/nix.conf
PYTEST_ARGS ?=

export DEBIAN_FRONTEND := noninteractive

.PHONY: setup system-deps nix-conf slurm-up ssh-up test lint demo bench bench-quick

setup: system-deps nix-conf $(STAMP)

# apt-get runs only for a tool that is missing; `apt-get update` at most once per make run.
system-deps:
	@need=(); \
	command -v nix-build >/dev/null 2>&1 || need+=(nix-bin); \
	command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck); \
	command -v dot >/dev/null 2>&1 || need+=(graphviz); \
	command -v patchelf >/dev/null 2>&1 || need+=(patchelf); \
	command -v bwrap >/dev/null 2>&1 || need+=(bubblewrap); \
	command -v podman >/dev/null 2>&1 || need+=(podman); \
	command -v runc >/dev/null 2>&1 || need+=(runc); \
	command -v tmux >/dev/null 2>&1 || need+=(tmux); \
	command -v chromium >/dev/null 2>&1 || need+=(chromium); \
	command -v dockerd >/dev/null 2>&1 || need+=(docker.io); \
	if (( $${#need[@]} )); then \
	  if [[ $$(id -u) -ne 0 ]]; then \
	    echo "make setup: missing $${need[*]}; run as root (or install them) first" >&2; exit 1; \
	  fi; \
	  echo "installing $${need[*]}"; \
	  apt-get update -qq; \
	  apt-get install -y -qq "$${need[@]}" >/dev/null; \
	fi

# Debian's single-user Nix cannot use the build sandbox on these machines.
nix-conf:
	@if ! grep -Eq '^[[:space:]]*sandbox[[:space:]]*=[[:space:]]*false[[:space:]]*$$' $(NIX_CONF) 2>/dev/null; then \
	  if [[ $$(id -u) -ne 0 ]]; then \
	    echo "make setup: $(NIX_CONF) needs 'sandbox = false'; run as root" >&2; exit 1; \
	  fi; \
	  mkdir -p $(dir $(NIX_CONF)); touch $(NIX_CONF); \
	  sed -i -E '/^[[:space:]]*sandbox[[:space:]]*=/d' $(NIX_CONF); \
	  echo 'sandbox = false' >> $(NIX_CONF); \
	  echo "set 'sandbox = false' in $(NIX_CONF)"; \
	fi

$(VPY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(VPY)
	$(VPY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

# The SLURM tests submit real jobs: install and start the 3-node test cluster (idempotent,
# ~0.5-2 s when it is already up, ~8 s on a fresh machine).
slurm-up:
	bash tests/slurm/cluster.sh start

# The remote-target tests ship labs over ssh to a real sshd (a local account, no Nix in its
# view; idempotent, ~0.5 s when it is already up): tests/ssh/sshd.sh, docs/remote.md.
ssh-up:
	bash tests/ssh/sshd.sh start

test: setup slurm-up ssh-up
	$(VPY) -m pytest -q $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check repx tests bench

demo: setup
	cd examples/simple && ../../$(VENV)/bin/repx lab build
	cd examples/simple && ../../$(VENV)/bin/repx list jobs --lab result
	cd examples/simple && ../../$(VENV)/bin/repx build --lab result -j 2
	cd examples/simple && ../../$(VENV)/bin/repx build --lab result
	cd examples/simple && ../../$(VENV)/bin/repx status --lab result
	cd examples/simple && cat .repx/outputs/*-consumer-*/out/sum.txt

# QUICK=1 (or `make bench-quick`) runs each bench's --quick mode; ONLY=peers,expand a subset.
bench: setup
	$(VPY) -m pip install -q -e '.[bench]'
	$(VPY) bench/run.py $(if $(QUICK),--quick) $(if $(ONLY),--only $(ONLY))

bench-quick:
	$(MAKE) bench QUICK=1
