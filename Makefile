# cliproxy: `make run` serves the example gateway, `make test` runs the suite. Both set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_PORT ?= 18080
IMAGE_TAG ?= dev

.PHONY: venv run test lint bench images e2e clean

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
	$(BIN)/python bench/propagation_bench.py

images:
	docker build -f deploy/docker/proxy.Dockerfile -t cliproxy-proxy:$(IMAGE_TAG) .
	docker build -f deploy/docker/operator.Dockerfile -t cliproxy-operator:$(IMAGE_TAG) .

e2e:
	deploy/e2e/kind-e2e.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
