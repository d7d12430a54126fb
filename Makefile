# madlib_dl — the two commands a newcomer needs are `make demo` and `make test`; both set up what is missing.
VENV       ?= $(CURDIR)/.venv
PYTHON     := $(VENV)/bin/python
MADLIB_DL_SCHEMA ?= madlib_dl
# The server to install into, as PGXS extensions choose it: make install PG_CONFIG=/usr/lib/postgresql/15/bin/pg_config
PG_CONFIG  ?= pg_config
CLI        := $(PYTHON) -m madlib_dl.tools.cli
export MADLIB_DL_SCHEMA PG_CONFIG

.PHONY: help setup install dev-install uninstall start stop status psql demo citus start-citus stop-citus test test-unit bench bench-peers constraints client-wheel clean

help:
	@echo "make demo     set up, start the embedded cluster, train a model inside the database"
	@echo "make test     set up, install, run every test suite"
	@echo "make setup    apt packages, venv with pinned packages, madlib_dl (idempotent)"
	@echo "make install  install the extension into the server's own directories (PG_CONFIG=... picks the server;"
	@echo "              MADLIB_DL_SCHEMA=madlib for MADlib scripts)"
	@echo "make dev-install   the same, but the server runs this checkout's code as it is edited (editable)"
	@echo "make uninstall     remove what make install wrote"
	@echo "make bench    fit_multiple vs plain Keras, KerasTuner, Ray Tune, side by side (BENCH_ARGS='--scale 2 --workloads small')"
	@echo "make client-wheel  the notebook client (client/: madlib-dl-client) as a wheel in client/dist, for"
	@echo "              pip install on a laptop (no TensorFlow; pip install ./client from a checkout does the same)"
	@echo "make start | stop | status | psql   the embedded cluster"
	@echo "make start-citus | stop-citus       the embedded Citus cluster (a coordinator and 2 worker nodes)"

setup:
	@bash src/setup.sh $(VENV)

install: setup
	@$(CLI) install --schema $(MADLIB_DL_SCHEMA)

dev-install: setup
	@$(CLI) install --dev --schema $(MADLIB_DL_SCHEMA)

uninstall:
	@$(CLI) install --uninstall

start: install
	@$(CLI) start

stop:
	@if [ -x $(PYTHON) ]; then $(CLI) stop; fi

# status and psql only look at (and start) the cluster: no set-up, no install, no output of theirs.
status: | $(PYTHON)
	@$(CLI) status

psql: | $(PYTHON)
	@$(CLI) psql

$(PYTHON):
	@bash src/setup.sh $(VENV)

demo: install
	@$(CLI) demo

# Citus for the distributed suite (tests/citus): the server's, else built once per machine from
# ../shared/vendor/citus (a few minutes); where it cannot be, the suite skips and says why.
citus: setup
	@$(CLI) citus

# The embedded cluster as a Citus cluster (a coordinator and 2 worker nodes, ports 54330-54332), for
# distributed runs and the bench's citus workload; `make demo` stays on the one-node cluster.
start-citus: install citus
	@$(CLI) citus-start

stop-citus:
	@if [ -x $(PYTHON) ]; then $(CLI) citus-stop; fi

test: install citus
	@echo "make test: every suite, about 23 minutes on 2 cores (make test-unit: the pure-Python tests, seconds)"
	@$(PYTHON) -m pytest -p no:cacheprovider tests

test-unit: setup
	@$(PYTHON) -m pytest -p no:cacheprovider tests/unit

bench: install bench-peers citus
	@$(PYTHON) bench/run.py $(BENCH_ARGS)

# KerasTuner and Ray Tune, the peers of the bench's search and big workloads, into $(VENV)/bench-peers
# (not the venv: `make test` never sees them); a no-op while bench/requirements-peers.txt is unchanged.
bench-peers: setup
	@bash bench/install_peers.sh $(VENV)

# After changing a pin in requirements*.txt and installing it: record every other package's version.
constraints: setup
	@$(PYTHON) -m madlib_dl.tools.constraints

# The notebook client as a wheel (client/dist/madlib_dl_client-<version>-py3-none-any.whl) to copy to a
# laptop: pip wheel --no-deps builds it alone, with the venv's pip where there is one, else python3's; pip
# fetches setuptools for the build (build isolation) as `pip install ./client` does.
CLIENT_PIP = $(if $(wildcard $(PYTHON)),$(PYTHON),python3) -m pip
# setuptools builds in client/build (stale files there would go into the wheel) and client/*.egg-info.
client-wheel:
	@rm -rf client/build client/*.egg-info client/dist/madlib_dl_client-*.whl
	@$(CLIENT_PIP) wheel -q --disable-pip-version-check --no-deps -w client/dist ./client 2>&1 | \
		{ grep -v "^WARNING: Location 'file:" || true; }
	@rm -rf client/build client/*.egg-info
	@ls -1 "$(CURDIR)"/client/dist/madlib_dl_client-*.whl

clean: stop stop-citus
	rm -rf "$$(readlink -f .cluster)" .cluster build *.egg-info src/*.o src/*.so src/*.bc client/build client/dist
