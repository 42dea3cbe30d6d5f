# Model Gallery: `make demo` and `make test` are the two commands a new user runs.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
MOTO_VENV := .venv-moto
FLOWER_VENV := .venv-flower
OPENVINO_VENV := .venv-openvino
BIN := $(VENV)/bin
export GALLERY_HOME ?= $(CURDIR)/.gallery

PACKAGES := libs/common libs/cli $(sort $(dir $(wildcard services/*/pyproject.toml)))
PACKAGE_FILES := $(foreach p,$(PACKAGES),$(p)/pyproject.toml)

# requirements/lock/<venv>.txt pin every package each venv gets (pip constraints: a package not listed there
# installs unpinned), so a new machine installs the versions the tests passed with. `make lock` writes them
# again from fresh, unconstrained venvs; LOCKED=0 installs without them.
LOCKED ?= 1
locked = $(if $(filter 1,$(LOCKED)),-c requirements/lock/$(1).txt)

.PHONY: help lock install postgres redis chromium valgrind promtool demo test chaos up down status bench lint clean images k8s proto

help:
	@echo "make demo    install, start the embedded stack and run the lifecycle"
	@echo "make test    install what the tests need and run them all"
	@echo "make up      start the stack in the background (make down stops it)"
	@echo "make bench   run the benchmarks in bench/ and print their figures"
	@echo "make chaos   kill and starve the servers under the services (tests/chaos) and print the figures"
	@echo "make lint    ruff and mypy"
	@echo "make proto   regenerate the OIP gRPC modules from libs/common's grpc_predict_v2.proto"
	@echo "make lock    resolve every venv afresh and write requirements/lock/ (the versions make install pins)"
	@echo "make images  build the container images (needs docker); make k8s renders deploy/k8s"

$(BIN)/.installed: $(PACKAGE_FILES) requirements/dev.txt requirements/lock/main.txt
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(call locked,main) $(foreach p,$(PACKAGES),-e $(p)) -r requirements/dev.txt
	@touch $@

# Flower for federated training in its own venv: flwr pins fastapi, protobuf, typer and pathspec below what the
# services and mypy need. Its processes only relay between Flower and the trainer's own, so the trainer and
# common packages go in without their dependencies (the relay modules import flwr, numpy and the stdlib).
$(FLOWER_VENV)/.installed: requirements/flower.txt requirements/lock/flower.txt services/trainer/pyproject.toml \
		libs/common/pyproject.toml
	@test -x $(FLOWER_VENV)/bin/python || $(PYTHON) -m venv $(FLOWER_VENV)
	$(FLOWER_VENV)/bin/pip install --quiet $(call locked,flower) -r requirements/flower.txt
	$(FLOWER_VENV)/bin/pip install --quiet --no-deps -e libs/common -e services/trainer
	@touch $@

# The model server with ONNX Runtime's OpenVINO execution provider in its own venv: onnxruntime-openvino installs
# the same `onnxruntime` module as onnxruntime. The deployer's local runtime runs the model servers whose policy
# prefers OpenVINO with its python. Our packages go in with their dependencies (so a new one arrives here too),
# then the plain onnxruntime they pulled is swapped for the OpenVINO build (its files overwrite the same module).
$(OPENVINO_VENV)/.installed: requirements/openvino.txt requirements/lock/openvino.txt \
		services/deployer/pyproject.toml libs/common/pyproject.toml
	@test -x $(OPENVINO_VENV)/bin/python || $(PYTHON) -m venv $(OPENVINO_VENV)
	$(OPENVINO_VENV)/bin/pip install --quiet $(call locked,openvino) -e libs/common -e services/deployer
	$(OPENVINO_VENV)/bin/pip uninstall --quiet --yes onnxruntime
	$(OPENVINO_VENV)/bin/pip install --quiet --force-reinstall --no-deps -r requirements/openvino.txt
	$(OPENVINO_VENV)/bin/python -c "import onnxruntime, gallery_deployer.modelserver.app; \
		assert 'OpenVINOExecutionProvider' in onnxruntime.get_available_providers()"
	@touch $@

$(MOTO_VENV)/.installed: requirements/moto.txt requirements/lock/moto.txt
	@test -x $(MOTO_VENV)/bin/python || $(PYTHON) -m venv $(MOTO_VENV)
	$(MOTO_VENV)/bin/pip install --quiet $(call locked,moto) -r requirements/moto.txt
	@touch $@

# Every venv built again without the locks, then each lock written from what it got (minutes: four installs)
lock:
	rm -rf $(VENV) $(MOTO_VENV) $(FLOWER_VENV) $(OPENVINO_VENV)
	$(MAKE) LOCKED=0 $(BIN)/.installed $(MOTO_VENV)/.installed $(FLOWER_VENV)/.installed $(OPENVINO_VENV)/.installed
	@for pair in $(VENV):main $(MOTO_VENV):moto $(FLOWER_VENV):flower $(OPENVINO_VENV):openvino; do \
		venv=$${pair%%:*}; name=$${pair##*:}; \
		{ echo "# The versions \`make install\` puts into $$venv (pip constraints): what the tests last passed with."; \
		  echo "# Written by \`make lock\` (Python 3.11, Linux x86-64); edit a requirement, then run it again."; \
		  $$venv/bin/pip freeze --exclude-editable; } > requirements/lock/$$name.txt; \
		echo "wrote requirements/lock/$$name.txt"; done

# PostgreSQL for the registry's store contract tests; root on a Debian-like machine installs it
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { \
		echo "installing PostgreSQL (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null; }

# redis-server for the gateway's shared response cache tests
redis:
	@command -v redis-server >/dev/null 2>&1 || { \
		echo "installing redis-server (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

# chromium + chromedriver for the Gallery's browser tests (its pages and its Monitoring view)
chromium:
	@command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1 || { \
		echo "installing chromium and chromium-driver (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; }

# valgrind runs ONNX Runtime on an emulated CPU without AVX-512/VNNI, for the INT8 tests
valgrind:
	@command -v valgrind >/dev/null 2>&1 || { \
		echo "installing valgrind (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq valgrind >/dev/null; }

# promtool lints every /metrics in the tests: taken out of Debian's prometheus package into the venv,
# so no Prometheus server gets installed or started
promtool: $(BIN)/promtool

# $(call deb-binary,PACKAGE,PATH): the binary at PATH in Debian's PACKAGE, put at the target (nothing is
# installed system-wide, no service is started)
define deb-binary
	@echo "installing $(notdir $(2)) into $(BIN) (from Debian's $(1) package)"
	@rm -rf $(VENV)/.deb-$(1) && mkdir -p $(VENV)/.deb-$(1)
	@cd $(VENV)/.deb-$(1) && { apt-get download $(1) >/dev/null 2>&1 || \
		{ apt-get update -qq && apt-get download $(1) >/dev/null; }; }
	@dpkg-deb -x $(VENV)/.deb-$(1)/$(1)_*.deb $(VENV)/.deb-$(1)/root
	@install -m 0755 $(VENV)/.deb-$(1)/root$(2) $@
	@rm -rf $(VENV)/.deb-$(1)
endef

$(BIN)/promtool: $(BIN)/.installed
	$(call deb-binary,prometheus,/usr/bin/promtool)

# the serving benchmark's reference proxy (bench/serve_nginx.py)
$(BIN)/nginx: $(BIN)/.installed
	$(call deb-binary,nginx,/usr/sbin/nginx)

# DeepSpeed's CPU communication op, compiled once into this installation's own folder (.venv/var/gallery-trainer/
# torch_extensions), which the trainer's ranks use: no other checkout on the machine rebuilds it or waits on its lock
$(VENV)/.ops-built: $(BIN)/.installed
	$(BIN)/python -m gallery_trainer.engine.build_ops
	@touch $@

install: $(BIN)/.installed $(VENV)/.ops-built $(FLOWER_VENV)/.installed $(OPENVINO_VENV)/.installed

demo: install
	@$(BIN)/python scripts/demo.py

# Test files run on TEST_WORKERS processes (a file's tests stay together, in order, on one of them): 2 workers
# took the suite from 1,402 s to about 980 s on 2 cores. TEST_WORKERS=0 runs them in this one process.
TEST_WORKERS ?= 2

test: $(BIN)/.installed $(VENV)/.ops-built $(MOTO_VENV)/.installed $(FLOWER_VENV)/.installed $(OPENVINO_VENV)/.installed postgres redis chromium valgrind promtool
	$(BIN)/pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile --durations=30

# tests/chaos: servers killed, stopped or starved under the services; not part of `make test` (minutes long).
# Each scenario writes its figures to .gallery/chaos/, which scripts/chaos_table.py turns into the README's table.
chaos: $(BIN)/.installed $(VENV)/.ops-built $(MOTO_VENV)/.installed postgres
	GALLERY_CHAOS=1 $(BIN)/pytest -q -p no:cacheprovider tests/chaos
	GALLERY_TEST_BUS_OUTAGE_S=60 $(BIN)/pytest -q -p no:cacheprovider \
		"tests/integration/serving/test_serving_without_bus.py::test_nats_down_under_steady_load_fails_no_request_and_samples_resume"
	$(BIN)/python scripts/chaos_table.py

up: install
	$(BIN)/gallery up --detach

down:
	@test -x $(BIN)/gallery && $(BIN)/gallery down || true

status: install
	$(BIN)/gallery status

# serve_load.py, serve_grpc_load.py and serve_competitors.py are parts of serve.py, not benchmarks of their own
BENCHES = bus registry routes catalogue heal train trainer_service federated optimize serve cold_start explain deploy experiments monitor monitor_text monitor_quality providers serve_providers text_models text_train identify sessions audit

bench: install chromium $(BIN)/nginx
	@missed=""; for b in $(BENCHES); do echo "== bench/$$b.py"; $(BIN)/python bench/$$b.py || missed="$$missed $$b"; done; \
		if [ -n "$$missed" ]; then echo "== missed a target or failed:$$missed"; exit 1; fi

# the OIP gRPC modules in libs/common, generated from the .proto committed beside them (grpcio-tools from dev.txt)
proto: $(BIN)/.installed
	$(BIN)/python scripts/gen_oip_grpc.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy libs/common/src libs/cli/src $(wildcard services/*/src)

VERSION ?= 0.1.0
IMAGES := gallery registry trainer optimizer deployer gateway monitor modelserver modelserver-gpu modelserver-openvino

# BuildKit is needed: each Dockerfile mounts its builder's wheels. TORCH_INDEX_URL=... overrides the CPU torch index.
images:
	@for i in $(IMAGES); do echo "== modelgallery/$$i:$(VERSION)"; \
		DOCKER_BUILDKIT=1 docker build $(if $(TORCH_INDEX_URL),--build-arg TORCH_INDEX_URL=$(TORCH_INDEX_URL)) \
		-f deploy/images/$$i.Dockerfile -t modelgallery/$$i:$(VERSION) . || exit 1; done

# re-render deploy/k8s/rendered/*.yaml after changing the Kustomize files (the tests compare them)
k8s: install
	$(BIN)/python scripts/render_k8s.py

clean: down
	rm -rf $(VENV) $(MOTO_VENV) $(FLOWER_VENV) $(OPENVINO_VENV) .gallery
