# cliproxy: `make run` serves the example gateway, `make test` runs the suite. Both set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_PORT ?= 18080
# Where `make clients` installs Claude Code and Codex CLI (npm, a local prefix: nothing global).
CLIENTS_NPM ?= build/clients/npm
KIND_CLUSTER ?= kind
# The git revision `make bench` measures this tree's proxy against, in the same run (BASELINE= to skip).
BASELINE ?= main
# PROXY_IMAGE, OPERATOR_IMAGE and IMAGE_TAG: the names the chart runs by default (override on the command line).
include deploy/helm/cliproxy/images.env
# Debian packages the tests run (shellcheck checks deploy/e2e/kind-e2e.sh; the limit tests share a real
# redis-server); installed when missing.
SYSTEM_PACKAGES := shellcheck redis-server
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: venv sysdeps run test lint bench envtest clients images kind-load e2e clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet uv
	$(BIN)/uv pip install --quiet --compile-bytecode --python $(BIN)/python -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

sysdeps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do command -v $$p > /dev/null || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		$(SUDO) apt-get install -y -qq $$missing > /dev/null 2>&1 \
		|| { $(SUDO) apt-get update -qq > /dev/null && $(SUDO) apt-get install -y -qq $$missing > /dev/null; }; \
	fi

run: $(STAMP)
	@echo "starting the DEMO upstream on 127.0.0.1:$(DEMO_PORT) (a local fake, not a real provider)"
	@$(BIN)/cliproxy-demo-upstream --port $(DEMO_PORT) --key demo-key-1 --key demo-key-2 & \
	demo=$$!; trap 'kill $$demo 2>/dev/null' EXIT INT TERM; \
	$(BIN)/cliproxy-proxy --config examples/config.yaml

test: $(STAMP) sysdeps
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy -p cliproxy_proxy -p cliproxy_operator

bench: $(STAMP) sysdeps
	$(BIN)/python bench/proxy_bench.py $(if $(BASELINE),--baseline $(BASELINE))
	$(BIN)/python bench/operator_bench.py
	$(BIN)/python bench/propagation_bench.py
	$(BIN)/python bench/fault_bench.py
	$(BIN)/python bench/limits_bench.py

# The operator tests against a real etcd + kube-apiserver (the envtest tier): KUBEBUILDER_ASSETS names a directory
# holding both binaries (`setup-envtest use -p path`). Neither PyPI nor Debian ships a kube-apiserver, so this is
# not part of `make test`, where those cases skip and say why.
envtest: $(STAMP)
	@[ -x "$$KUBEBUILDER_ASSETS/kube-apiserver" ] && [ -x "$$KUBEBUILDER_ASSETS/etcd" ] \
	|| { echo "envtest: set KUBEBUILDER_ASSETS to a directory holding etcd and kube-apiserver"; exit 2; }
	$(BIN)/python -m pytest -q -p no:randomly tests/operator -k envtest

# The clients people run (SDKs, litellm, Claude Code, Codex CLI) through the proxy at scripted upstreams: a table of
# client x upstream. Not part of `make test`: it installs litellm and two npm packages, and runs the CLIs.
clients: $(STAMP)
	$(BIN)/pip install --quiet 'litellm>=1.70'
	@[ -x $(CLIENTS_NPM)/node_modules/.bin/claude ] && [ -x $(CLIENTS_NPM)/node_modules/.bin/codex ] \
	|| npm install --prefix $(CLIENTS_NPM) --no-audit --no-fund @anthropic-ai/claude-code @openai/codex
	$(BIN)/python -m tests.clients.matrix --npm $(CLIENTS_NPM)

images:
	docker build -f deploy/docker/proxy.Dockerfile -t $(PROXY_IMAGE):$(IMAGE_TAG) .
	docker build -f deploy/docker/operator.Dockerfile -t $(OPERATOR_IMAGE):$(IMAGE_TAG) .

kind-load: images
	kind load docker-image --name $(KIND_CLUSTER) $(PROXY_IMAGE):$(IMAGE_TAG) $(OPERATOR_IMAGE):$(IMAGE_TAG)

e2e:
	deploy/e2e/kind-e2e.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
