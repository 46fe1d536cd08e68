# serverPKI — the two commands a newcomer needs: `make demo` and `make test`.
# Both install what is missing first (Debian packages as root, a virtualenv).

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
APT_PACKAGES := postgresql-15 postgresql-contrib postgresql-plpython3-15 python3-cryptography \
                pebble bind9 bind9-utils bind9-dnsutils unbound openssh-server openssl iproute2 man-db systemd
STAMP_APT := $(VENV)/.apt-done
STAMP_PIP := $(VENV)/.pip-done
# the lab (lab/: real peers on loopback, and the demo) is never installed: it is imported from the checkout
WITH_LAB := PYTHONPATH=$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}

.PHONY: setup test test-fast demo bench clean db-init db-upgrade db-status

setup: $(STAMP_APT) $(STAMP_PIP)

# the real peers: PostgreSQL with plpython3u, Pebble, BIND 9, OpenSSH; iproute2 cuts a host off (netns);
# man-db and systemd (systemd-analyze) check the man pages and contrib/'s units (tests/test_packaging.py)
$(STAMP_APT):
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages: $$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@$(PYTHON) -m venv $(VENV)
	@touch $@

# setuptools 77+: tests/test_packaging.py builds the wheel in this venv (no build isolation)
$(STAMP_PIP): pyproject.toml $(STAMP_APT)
	@$(BIN)/pip install -q --upgrade pip 'setuptools>=77' wheel
	@$(BIN)/pip install -q -e '.[test,lab]'
	@touch $@

# two workers (pytest-xdist): every test makes its own database, every lab its own ports and folders.
# --dist loadscope: a module's tests stay on one worker, in file order: a module-scoped lab (a fleet) is
# started once, and the tests that build on each other's steps (a renewal, then its revocation) see them
test: setup
	$(WITH_LAB) $(BIN)/pytest -q -n 2 --dist loadscope

demo: setup
	$(WITH_LAB) $(BIN)/serverpki demo

# every bench, each printing its figures (and its target where the issue set one); some of them only:
# make bench BENCHES="bench/startup.py bench/vs_original.py"
BENCHES ?= $(sort $(wildcard bench/*.py))
bench: setup
	@for b in $(BENCHES); do echo "== $$b"; $(BIN)/python $$b || exit 1; done

# apply db/ to the database named by PGHOST/PGPORT/PGDATABASE/PGUSER
db-init: setup
	$(BIN)/serverpki db init
db-upgrade: setup
	$(BIN)/serverpki db upgrade
db-status: setup
	$(BIN)/serverpki db status

clean:
	rm -rf $(VENV) build *.egg-info agent/*.egg-info .pytest_cache
