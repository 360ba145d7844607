# The two set-up commands are `make demo` and `make test`; both bootstrap .venv themselves.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# glibc malloc churn costs about half of the CPU time in torch and ONNX Runtime on this
# kind of machine (see docs/benchmarks.md); keep freed memory instead of trimming it.
export MALLOC_MMAP_THRESHOLD_ := 2000000000
export MALLOC_TRIM_THRESHOLD_ := 2000000000
export MLFLOW_DISABLE_TELEMETRY := true
export HF_HUB_OFFLINE := 1

.PHONY: demo test lint format bench stop clean

# The review app's browser tests drive Debian's Chromium (never a downloaded one).
CHROMIUM := /usr/bin/chromium

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[edge,train,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m zerodefect demo

$(CHROMIUM):
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium \
		|| (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends chromium)

# The MQTT tests run against Debian's mosquitto, started by the suite on a loopback port.
MOSQUITTO := /usr/sbin/mosquitto

$(MOSQUITTO):
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mosquitto \
		|| (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mosquitto)

# The record, migration and review tests also run on PostgreSQL: the suite starts a throw-away
# cluster with Debian's initdb and pg_ctl (zerodefect/pgcluster.py), never the machine's own server.
PG_CTL := $(or $(firstword $(wildcard /usr/lib/postgresql/*/bin/pg_ctl)),/usr/lib/postgresql/15/bin/pg_ctl)

$(PG_CTL):
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql \
		|| (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql)

# The Ray engine of `zerodefect rescore` (the `scale` extra, about 730 MB): the suite runs it;
# `make demo` does not need it.
SCALE := $(VENV)/.scale-installed

$(SCALE): $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[scale]'
	touch $(SCALE)

test: $(STAMP) $(SCALE) $(CHROMIUM) $(MOSQUITTO) $(PG_CTL)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

# The classifier, PLC, detector and anomaly rows of docs/benchmarks.md. Without a finished anomaly
# run, the first call fits a stand-in on generated parts (minutes, once). Only the anomaly rows,
# keeping the others: make bench BENCH_ARGS="--run '' --detector-run ''"; without the PLC rows
# (OPC UA and Modbus, keeping the last ones): BENCH_ARGS=--no-plc
BENCH_ARGS ?=
# The record's ingest rate on a durable throw-away PostgreSQL (docs/results/ingest-bench.json,
# about 2 minutes); skip it with make bench INGEST_BENCH=0.
INGEST_BENCH ?= 1
INGEST_ARGS ?=
bench: $(STAMP)
	$(BIN)/python -m zerodefect bench $(BENCH_ARGS)
	if [ "$(INGEST_BENCH)" = 1 ]; then $(BIN)/python -m zerodefect bench-ingest $(INGEST_ARGS); fi

# Stop the record service that `make demo` leaves running.
stop:
	-test -f var/record.json && kill $$($(PYTHON) -c 'import json; print(json.load(open("var/record.json"))["pid"])')
	rm -f var/record.json

clean: stop
	rm -rf var .pytest_cache .ruff_cache
