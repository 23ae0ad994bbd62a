# Throughline: `make run` starts the stack, `make test` runs every test. Both set up
# everything they need on a fresh machine: the virtual environment, the pinned
# dependencies, the generated protobuf code and PostgreSQL.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SITE := $(shell $(PYTHON) -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')
PROTO_SOURCES := $(shell find protos -name '*.proto')
PROTO_STAMP := protos/.generated

.PHONY: setup run test bench bench-eventstore bench-identity bench-identity-stages bench-identity-tuning protos lint db-url db-stop clean

setup: $(STAMP) $(PROTO_STAMP)

$(STAMP): pyproject.toml requirements.lock
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c requirements.lock -e '.[dev]'
	# Put the repository root and protos/ on sys.path, so import paths equal folder paths.
	printf '%s\n%s\n' "$(CURDIR)" "$(CURDIR)/protos" > $(VENV)/lib/$(SITE)/site-packages/throughline-paths.pth
	touch $(STAMP)

$(PROTO_STAMP): $(PROTO_SOURCES) $(STAMP)
	$(PY) -m infra.protos
	touch $(PROTO_STAMP)

protos: $(STAMP)
	$(PY) -m infra.protos
	touch $(PROTO_STAMP)

# The PostgreSQL URL in use: DATABASE_URL when set, else the embedded server (started).
db-url: setup
	@$(PY) -m infra.postgres url

db-stop: setup
	$(PY) -m infra.postgres stop

run: setup
	$(PY) -m infra.run

test: setup
	$(PY) -m pytest

bench: bench-eventstore bench-identity

bench-eventstore: setup
	$(PY) -m bench.eventstore

bench-identity: setup
	$(PY) -m bench.identity

# Where a RegisterPerson's server CPU goes: gRPC and the servicer, the application, the
# store, the search index (not part of `make bench`).
bench-identity-stages: setup
	$(PY) -m bench.identity_stages

# RegisterPerson against echo under several write windows and notify intervals, not part
# of `make bench`: e.g. ARGS='--windows 4,6 --notify 5,50 --rounds 6'.
bench-identity-tuning: setup
	$(PY) -m bench.identity_tuning $(ARGS)

lint: setup
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	cd protos && npx --yes @bufbuild/buf@1.75.0 lint

clean:
	rm -rf $(VENV) $(PROTO_STAMP)
	find protos -name '*_pb2*.py*' -delete
