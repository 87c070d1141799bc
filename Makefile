# l2net: `make demo` and `make test` do every install themselves (as root on Debian/Ubuntu).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
APT_PACKAGES := user-mode-linux kmod iproute2 containernetworking-plugins procps iputils-ping
# Only the deploy/ tests use these (systemd-analyze, openssl, docker-compose config); they are
# installed without Recommends so that no Docker engine comes along.
APT_TEST_PACKAGES := systemd openssl docker-compose

# ifupdown2 is the auditor tests' outside oracle (`ifquery -c`). Its package must not be
# installed on the host: it replaces ifupdown, writes /etc/network/interfaces, masks udev
# network rules and unmasks networking.service. So the .deb is only downloaded and extracted
# under .cache/, and run inside lab nodes with private mounts (tests/auditor/oracle.py).
IFUPDOWN2 := .cache/ifupdown2

.PHONY: demo test test-quick lint unit bench deps venv clean

deps: $(VENV)/.installed .apt-installed $(IFUPDOWN2)/.extracted

# Debian packages: the lab kernel (UML), modprobe, iproute2 and the bridge CNI plugin.
.apt-installed: Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "apt-get install$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; \
	fi
	@missing=""; for p in $(APT_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "apt-get install --no-install-recommends$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	@touch $@

$(IFUPDOWN2)/.extracted:
	rm -rf $(IFUPDOWN2) && mkdir -p $(IFUPDOWN2)
	cd $(IFUPDOWN2) && (apt-get download -qq ifupdown2 || (apt-get update -qq && apt-get download -qq ifupdown2))
	dpkg-deb -x $(IFUPDOWN2)/ifupdown2_*.deb $(IFUPDOWN2)/root
	@touch $@

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@touch $@

demo: deps
	$(VENV)/bin/l2net demo

lint: deps
	$(VENV)/bin/ruff check services shared tests
	$(VENV)/bin/ruff format --check services shared tests
	$(VENV)/bin/mypy

# Every test: the default suite, then the longer one (`-m long`: kill -9 and injected failures
# at every step of the seed topology in a lab node; docs/reliability.md). CI runs both.
test: deps lint
	$(VENV)/bin/pytest -q -p no:cacheprovider
	$(VENV)/bin/pytest -q -p no:cacheprovider -m long

# The default suite only (what a developer runs between changes).
test-quick: deps lint
	$(VENV)/bin/pytest -q -p no:cacheprovider

bench: deps
	$(PY) -m tests.bench

clean:
	rm -rf $(VENV) .apt-installed .cache
