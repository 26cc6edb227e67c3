# Everything a fresh machine with Python 3.11+ needs: `make demo`, `make test`.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
# The hot path (session, masking) is compiled with mypyc and Cython (setup.py): a change
# rebuilds it.
COMPILED := $(VENV)/.compiled
COMPILED_SOURCES := setup.py proxy_task/session.py $(wildcard custos/protocol/*.py custos/session/*.py custos/sql/*.py custos/masking/*.py custos/masking/*.pyx)

.PHONY: demo test lint bench clean postgres-clients browser pure

demo: $(COMPILED)
	$(VENV)/bin/custos demo

test: $(COMPILED) postgres-clients browser
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

# The approvals page is tested in a real headless browser: Debian's chromium and its driver.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq chromium chromium-driver; \
	  else \
	    echo "chromium or chromedriver missing: the approvals page's browser test is skipped"; \
	  fi; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(COMPILED)
	$(VENV)/bin/python bench/pgbench_gateway.py

$(STAMP): requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --upgrade pip
	$(VENV)/bin/pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

$(COMPILED): $(STAMP) $(COMPILED_SOURCES)
	$(VENV)/bin/pip install --quiet --no-deps -e .
	touch $(COMPILED)

# Plain Python instead of the compiled hot path: for a debugger or a quick edit loop.
pure: $(STAMP)
	CUSTOS_PURE_PYTHON=1 $(VENV)/bin/pip install --quiet --no-deps -e .
	find custos proxy_task -name '*.so' -delete
	rm -f custos_hot_path__mypyc*.so $(COMPILED)

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache .hypothesis build
	find custos proxy_task -name '*.so' -delete
	rm -f custos_hot_path__mypyc*.so
