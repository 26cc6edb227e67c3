# Everything a fresh machine with Python 3.11+ needs: `make demo`, `make test`.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean postgres-clients

demo: $(STAMP)
	$(VENV)/bin/custos demo

test: $(STAMP) postgres-clients
	$(VENV)/bin/pytest

# The tests drive the real psql, pgbench and pg_dump. pgserver ships copies built without
# TLS, so on a machine without PostgreSQL's own packages, install them when we can.
postgres-clients:
	@if ! command -v psql >/dev/null || ! command -v pgbench >/dev/null \
	    || ! command -v pg_dump >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq postgresql postgresql-client; \
	  else \
	    echo "psql, pgbench or pg_dump missing: the tests fall back to pgserver's copies"; \
	  fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/python bench/pgbench_gateway.py

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt -e .
	touch $(STAMP)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis
