# Quick start:  make demo   (virtualenv + daemon on the simulated plant)
#               make test   (virtualenv + the test suite)
# On the Pi:    sudo make install     (service in /opt/pictl, config in /etc/pictl; idempotent)
#               sudo make uninstall   (keeps /etc/pictl and /var/lib/pictl; scripts/uninstall.sh --purge)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-$(shell cksum pyproject.toml | cut -d' ' -f1)

.PHONY: demo demo-building demo-fleet crossbar test lint check-config bench bench-quick soak soak-hour partition scale clean install uninstall pi-check

$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "pictl needs Python 3.11 or newer (set PYTHON=python3.11)")'
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,dev]'
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	@echo
	@echo "pictl demo: simulated door, light, Modbus fan, serial hall_temp on ws://127.0.0.1:8765/ws (tokens demo-admin, demo-panel)"
	@echo "  try, in another terminal:  $(BIN)/pictl call door.open --token demo-admin"
	@echo "  wall panel: http://127.0.0.1:8765/ (token demo-panel)"
	@echo "  stop with Ctrl-C"
	@echo
	$(BIN)/pictl serve --config config/demo.toml --simulate

# The rest of the building: a lock, a garage opener, a blind, inputs, a meter, a 1-Wire thermometer.
demo-building: $(STAMP)
	@echo
	@echo "pictl building demo: entrance lock, garage, blind, bell, window, meter, boiler_temp on ws://127.0.0.1:8766/ws"
	@echo "  try, in another terminal:  $(BIN)/pictl call entrance.unlock --url ws://127.0.0.1:8766/ws --token demo-admin"
	@echo "  wall panel: http://127.0.0.1:8766/ (token demo-panel)"
	@echo "  stop with Ctrl-C"
	@echo
	$(BIN)/pictl serve --config config/building.toml --simulate

# The fleet: a Crossbar router, three simulated nodes and the aggregator, one wall panel for all.
demo-fleet: $(STAMP) crossbar
	$(BIN)/python scripts/demo_fleet.py

# Crossbar.io in its own virtualenv (.venv-crossbar): it pins an older websockets than pictl's.
crossbar:
	PYTHON=$(PYTHON) scripts/crossbar-venv.sh

# The few tests that measure the event loop's latency or run physics with margins of tens of
# milliseconds (marked alone) first, on their own; then the rest on four
# workers (pytest-xdist) even on two cores: most tests wait on sockets, timers and other processes.
# Tests that share a module-wide router are kept on one worker (xdist_group).
test: $(STAMP)
	$(BIN)/python -m pytest -m alone
	$(BIN)/python -m pytest -n 4 --dist loadgroup -m "not alone"

bench: $(STAMP) crossbar
	$(BIN)/python bench/run.py
	$(BIN)/python bench/failed_logins.py
	$(BIN)/python bench/wamp.py

# CI: every benchmark small (seconds each), and a 60 s chaos soak that fails on a broken invariant.
bench-quick: $(STAMP) crossbar
	$(BIN)/python bench/run.py --quick
	$(BIN)/python bench/failed_logins.py --quick
	$(BIN)/python bench/wamp.py --quick
	$(BIN)/python bench/scale.py --quick
	$(BIN)/python bench/soak.py --duration 60 --bridge mqtt --bridge wamp
	$(BIN)/python bench/partition.py --quick

# The 10-minute chaos soak (docs/benchmarks.md); exits 1 on a broken invariant.
soak: $(STAMP)
	$(BIN)/python bench/soak.py

# The hour that settles the RSS figure: samples and chart into docs/ (matplotlib: the bench extra).
soak-hour: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/soak.py --duration 3600 --samples docs/soak-rss.tsv --chart docs/soak-rss.png

# The partitioned building (root: network namespaces), about 5 minutes of cuts.
partition: $(STAMP) crossbar
	$(BIN)/python bench/partition.py

# The scale curves, with their charts redrawn into docs/ (matplotlib: the bench extra).
scale: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[bench]'
	$(BIN)/python bench/scale.py

lint: $(STAMP)
	$(BIN)/ruff check controller drivers tests bench examples scripts
	$(BIN)/mypy controller drivers

check-config: $(STAMP)
	$(BIN)/pictl check-config config/demo.toml
	$(BIN)/pictl check-config config/example-pi.toml

# On Raspberry Pi OS by emulation (as root): a Debian bookworm root of ARCH (arm64 or armhf) made with
# debootstrap, run through qemu-user-static, cached in /var/cache/pictl-pi-check; installs the wheel,
# runs the quick start and the core tests there (scripts/pi_check.py). PI_CHECK_FLAGS=--compare: the
# core tests on this host too, for the x86 figures.
ARCH ?= arm64
pi-check: $(STAMP)
	$(BIN)/python scripts/pi_check.py --arch $(ARCH) $(PI_CHECK_FLAGS)

install:
	scripts/install.sh

uninstall:
	scripts/uninstall.sh

clean:
	rm -rf $(VENV) .venv-crossbar .pytest_cache .ruff_cache *.egg-info
