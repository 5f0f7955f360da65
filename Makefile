# cliproxy: `make run` serves the example gateway, `make test` runs the suite. Both set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_PORT ?= 18080

.PHONY: venv run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

run: $(STAMP)
	@echo "starting the DEMO upstream on 127.0.0.1:$(DEMO_PORT) (a local fake, not a real provider)"
	@$(BIN)/cliproxy-demo-upstream --port $(DEMO_PORT) --key demo-key-1 --key demo-key-2 & \
	demo=$$!; trap 'kill $$demo 2>/dev/null' EXIT INT TERM; \
	$(BIN)/cliproxy-proxy --config examples/config.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p cliproxy_proxy -p cliproxy_operator

bench: $(STAMP)
	$(BIN)/python bench/proxy_bench.py
	$(BIN)/python bench/operator_bench.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
