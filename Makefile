# beambridge: `make test` and `make run` install whatever is missing on a
# fresh machine (Debian's Elixir/OTP, a .venv with the Python packages) first.

VENV      := .venv
PY        := $(VENV)/bin/python
PIP       := $(VENV)/bin/pip
STAMP     := $(VENV)/.installed
NODE_DIR  := elixir_node

.PHONY: test test-elixir test-python run deps elixir venv compose secrets bench clean

test: deps test-elixir test-python

deps: elixir venv compose

# Debian's packages: elixir pulls in OTP; erlang-dev brings the headers
# that some OTP tooling expects. docker-compose only validates the stack file.
elixir:
	@command -v elixir >/dev/null 2>&1 || { \
	  apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq elixir erlang-dev >/dev/null; }

# Debian's docker-compose validates the stack file without a Docker engine.
compose:
	@command -v docker-compose >/dev/null 2>&1 || { \
	  apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-compose >/dev/null; }

# Random secrets for `docker compose up` (see docs/docker.md).
secrets:
	docker/make-secrets.sh

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test]'
	touch $(STAMP)

test-elixir: elixir
	cd $(NODE_DIR) && mix test

test-python: deps
	cd $(NODE_DIR) && MIX_ENV=prod mix compile >/dev/null
	$(PY) -m pytest -q

run: deps
	$(VENV)/bin/beambridge demo

bench: deps
	cd $(NODE_DIR) && MIX_ENV=prod mix run --no-start ../bench/node_bench.exs
	cd $(NODE_DIR) && MIX_ENV=prod mix run --no-start ../bench/splitter_bench.exs
	$(PY) bench/roundtrip.py

clean:
	rm -rf $(VENV) $(NODE_DIR)/_build
