# Everything a fresh machine needs for the README's two commands: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: help venv broker demo run test test-main test-ha test-ha-2025 test-ha-2026 hacs lint bench clean

help:
	@echo "make demo   - broker + simulated RK3588 + daemon on this machine, one streamed answer"
	@echo "make test   - lint, type check, the daemon/runtime tests (real Mosquitto, real simulator), both Home Assistant tiers"
	@echo "make hacs   - the HACS repository tree of the integration, in build/hacs"
	@echo "make bench  - the performance budgets in benchmarks/"

venv: $(BIN)/.installed

$(BIN)/.installed: pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "rkllm-mqtt needs Python >= 3.11 (set PYTHON=...)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,demo]'
	@touch $@

# Mosquitto and its clients from the distribution when missing; the tests start their own broker
# on a free port, and mosquitto_pub/mosquitto_sub drive the README examples and some tests.
broker:
	@if { command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; } \
		&& command -v mosquitto_sub >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
		echo "installing mosquitto (apt-get)"; \
		$(SUDO) apt-get update -qq && $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mosquitto mosquitto-clients >/dev/null; \
	else echo "mosquitto not found and apt-get unavailable: install Mosquitto with your package manager"; fi

demo: venv broker
	$(BIN)/rkllm-mqtt demo

run: demo

test: test-main test-ha

test-main: venv broker
	$(BIN)/ruff check .
	$(BIN)/mypy
	$(BIN)/pytest

# Both Home Assistant tiers: 2025.4.4 (the oldest supported) and 2026.10.4 (a chroot with Python 3.14);
# a tier that cannot run on this machine is skipped with one line saying why.
test-ha: venv broker
	bash tests/ha/run.sh all

test-ha-2025: venv broker
	bash tests/ha/run.sh 2025

test-ha-2026:
	bash tests/ha/run.sh 2026

hacs:
	bash ha_integration/build-hacs.sh build/hacs

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: venv broker
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .venv-ha .pytest_cache .ruff_cache .mypy_cache *.egg-info build/hacs
