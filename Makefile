# Two entry points (README): `make run` and `make test`. Both set up .venv first; `make serve`
# then serves the local registry's production model on http://127.0.0.1:8080.
# `make images` builds the two container images (images/README.md); `make check-install`
# proves the locks resolve from public indexes alone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
DOCKER ?= docker
IMAGE_PREFIX ?= ghcr.io/searchtune
IMAGE_TAG ?= $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
BUILD_ARGS ?=

.PHONY: setup run serve test images image-cpu image-gpu check-install bench clean

# torch's CPU build first, from the index its lock names (images/requirements-torch-cpu.lock:
# the only package not from PyPI), then exactly the lock from PyPI, then the project.
$(BIN)/searchtune: pyproject.toml images/requirements-cpu.lock images/requirements-torch-cpu.lock
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --no-deps -r images/requirements-torch-cpu.lock
	$(BIN)/pip install --quiet --no-deps -r images/requirements-cpu.lock
	$(BIN)/pip install --quiet -e ".[test]"
	@touch $@

setup: $(BIN)/searchtune

# Exit 3 is a finished run whose candidate the gate refused: an answer, not a failure.
run: setup
	HF_HUB_OFFLINE=1 $(BIN)/searchtune run; code=$$?; [ $$code -eq 0 ] || [ $$code -eq 3 ]

# The version the last blessed run made production, served in place from the local registry.
SEARCHTUNE ?= $(BIN)/searchtune
SERVE_HOST ?= 127.0.0.1
SERVE_PORT ?= 8080
REGISTRY ?= $(or $(SEARCHTUNE_REGISTRY),.searchtune/registry)
serve: setup
	@HF_HUB_OFFLINE=1 $(SEARCHTUNE) serve --model @production --registry $(REGISTRY) --host $(SERVE_HOST) --port $(SERVE_PORT)

test: setup
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest

# Both locks resolve with pip's configuration and environment ignored (public indexes only).
check-install: setup
	$(BIN)/python images/check_install.py

images: image-cpu image-gpu

# BuildKit for the build secrets (images/README.md): docker buildx, or a client with it built in.
image-cpu:
	DOCKER_BUILDKIT=1 $(DOCKER) build -f images/Dockerfile.cpu -t $(IMAGE_PREFIX)/searchtune-cpu:$(IMAGE_TAG) $(BUILD_ARGS) .

image-gpu:
	DOCKER_BUILDKIT=1 $(DOCKER) build -f images/Dockerfile.gpu -t $(IMAGE_PREFIX)/searchtune-gpu:$(IMAGE_TAG) $(BUILD_ARGS) .

clean:
	rm -rf $(VENV) .searchtune
