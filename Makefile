# make train: set up .venv and train + evaluate the cpu-small default.  make test: set up and run the tests.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Offline by default: nothing downloads from a model hub, W&B writes offline runs for `wandb sync`.
# Set a variable in the environment to override it; an empty value counts as unset.
ifeq ($(strip $(HF_HUB_OFFLINE)),)
HF_HUB_OFFLINE := 1
endif
ifeq ($(strip $(TRANSFORMERS_OFFLINE)),)
TRANSFORMERS_OFFLINE := 1
endif
ifeq ($(strip $(WANDB_MODE)),)
WANDB_MODE := offline
endif
ifeq ($(strip $(DATA_DIR)),)
DATA_DIR := $(abspath ../shared/data/beir)
endif
export HF_HUB_OFFLINE TRANSFORMERS_OFFLINE WANDB_MODE DATA_DIR

.PHONY: install lock train prepare sweep test test-slow lint format clean bench bench-retrieval reproduce-table

install: $(STAMP)

# Exactly the lock (pinned torch: pip takes the CPU wheel from local disk), then this package without resolving
# anything; pip-sync removes what the lock does not hold, so an old .venv ends up the same as a fresh one.
$(STAMP): pyproject.toml requirements-dev.lock
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $$(grep -E '^pip==' requirements-dev.lock)
	$(PY) -m pip install -q --no-compile --no-deps -r requirements-dev.lock
	$(VENV)/bin/pip-sync -q requirements-dev.lock
	@# Bytecode on every core: pip compiles one file at a time (70 of a 100 s install on 2 cores), and where
	@# PYTHONDONTWRITEBYTECODE is set nothing would ever cache it. Like pip, skip files this Python cannot compile.
	$(PY) -m compileall -qq -j 0 $$($(PY) -c 'import sysconfig; print(sysconfig.get_path("purelib"))') || true
	$(PY) -m pip install -qq --no-deps --no-build-isolation -e .  # -qq: setuptools warns on every editable build
	touch $(STAMP)

# Re-resolve the locks from pyproject.toml's bounds (final releases only: see lock-constraints.txt), then install.
# requirements.lock: the runtime; requirements-dev.lock: runtime + tests/benchmarks (what make install installs).
LOCK = $(VENV)/bin/pip-compile -q --upgrade --strip-extras --allow-unsafe --no-emit-index-url --no-emit-find-links \
	-c lock-constraints.txt pyproject.toml
lock:
	@test -x $(VENV)/bin/pip-compile || { $(PYTHON) -m venv $(VENV) && $(PY) -m pip install -q pip-tools; }
	$(LOCK) --extra dev -o requirements-dev.lock
	$(LOCK) -c requirements-dev.lock -o requirements.lock  # the runtime at the dev lock's versions
	$(MAKE) install

# Extra Hydra overrides: make train ARGS="activation=log2 mask.t=200"
train: $(STAMP)
	$(PY) -m src.train $(ARGS)

# Run a sweep file offline: make sweep SWEEP=threshold ARGS="--dry-run" (see sweeps/README.md)
SWEEP ?= threshold
sweep: $(STAMP)
	$(PY) -m src.sweep sweeps/$(SWEEP).yaml $(ARGS)

# Build a training set on disk: make prepare ARGS="datasets=[scifact,nfcorpus] paths.output_dir=/tmp/cpu_small"
prepare: $(STAMP)
	$(PY) -m src.prepare $(ARGS)

test: $(STAMP) lint
	$(PY) -m pytest -ra $(PYTEST_ARGS)

# The multi-process end-to-end runs left out of `make test` to keep it near 10 minutes (~4 min more; CI runs both)
test-slow: $(STAMP)
	$(PY) -m pytest -ra -m slow $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks notebooks
	$(VENV)/bin/ruff format --check src tests benchmarks notebooks

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks notebooks
	$(VENV)/bin/ruff format src tests benchmarks notebooks

# Exact top-k over a synthetic 1M-document corpus, our search vs a plain scipy product and the BMP engine: q/s and
# peak memory to benchmarks/results_retrieval.json (~6 min; the corpus is generated once into .cache/).
# Extra flags: make bench-retrieval ARGS="--k 10 --scipy-queries 200"; BEIR-13 scale: ARGS="--docs 5400000"
bench-retrieval: $(STAMP)
	$(PY) benchmarks/retrieval.py $(ARGS)

# Encoding (documents/s, peak memory) and training steps (seconds, peak memory): ours vs the straightforward HF
# head vs sentence-transformers on scifact, with the machine's GEMM bound and NDCG@10 under bf16. Writes
# benchmarks/results.json and prints a table (~12 min; QUICK=1: under 5). LOAD=1: ours, HF and ST measured again beside
# a competing 2-thread torch process (the figures *_loaded, kept_under_load; about twice as long). More flags: make bench ARGS="--device cuda"
bench: $(STAMP)
	$(PY) benchmarks/encode_train.py $(if $(QUICK),--quick) $(if $(LOAD),--load) $(ARGS)

# The protocol's table and frontier: evaluates the reference rows that have no results yet (BM25; the teachers,
# alone and as the ensemble training distils, the ceiling; the untrained student, as shipped and pruned post hoc,
# the baseline training must beat), trains every row of sweeps/<protocol>.yaml that has none (a killed run
# resumes), then writes results/table.md, results/frontier.png and curves.png. PROTOCOL=paper runs the paper grid
# (hand it to a cluster: ARGS="--launcher slurm").
PROTOCOL ?= cpu-small
RESULTS ?= results
REPORT_DATASETS = $(if $(filter paper,$(PROTOCOL)),$(BEIR13),scifact,nfcorpus)
BEIR13 = trec-covid,nfcorpus,nq,hotpotqa,fiqa,arguana,webis-touche2020,dbpedia-entity,scidocs,fever,climate-fever,scifact,quora
REFS = $(RESULTS)/runs/reference-$(PROTOCOL)
# The reference teachers read 256 tokens, MiniLM's usual length (the training default reads 128: conf/data/cpu_small.yaml).
MINILM = {kind:bi_encoder,name:minilm,model:sentence-transformers/all-MiniLM-L6-v2,pooling:mean,similarity:cos,max_length:256}
ENSEMBLE = {kind:bm25,name:bm25},$(MINILM)
PRUNE_RATIOS = 0.2 0.4 0.6
EVAL = $(PY) -m src.evaluate datasets=[$(REPORT_DATASETS)]
# $(call reference,NAME,ARGS): evaluates a reference row into $(REFS)/NAME unless it has results (all of them take
# ~20 min; delete the folder to redo one).
reference = { test -f $(REFS)/$(1)/results.json || $(EVAL) $(2) paths.output_dir=$(REFS)/$(1); }
reproduce-table: $(STAMP)
	@test -f sweeps/$(subst -,_,$(PROTOCOL)).yaml || { echo "PROTOCOL=$(PROTOCOL): no sweeps/$(subst -,_,$(PROTOCOL)).yaml"; exit 2; }
	$(call reference,bm25,mode=bm25)
	$(call reference,minilm,mode=teachers 'teachers=[$(MINILM)]')
	$(call reference,teachers,mode=teachers 'teachers=[$(ENSEMBLE)]')
	$(call reference,splade-tiny,)
	$(foreach r,$(PRUNE_RATIOS),$(call reference,splade-tiny-pruned-$(r),prune_ratio=$(r)) && ) true
	$(PY) -m src.sweep sweeps/$(subst -,_,$(PROTOCOL)).yaml --out $(RESULTS)/runs $(ARGS)
	$(PY) -m src.report --runs $(RESULTS)/runs/$(PROTOCOL) --out $(RESULTS) --layout $(PROTOCOL) \
		--datasets $(REPORT_DATASETS) --command "make reproduce-table PROTOCOL=$(PROTOCOL)" \
		--reference BM25=$(REFS)/bm25 \
		--reference "teacher: all-MiniLM-L6-v2 (dense)=$(REFS)/minilm" \
		--reference "teachers: BM25 + MiniLM ensemble=$(REFS)/teachers" \
		--reference "splade-tiny (inference-free, as shipped)=$(REFS)/splade-tiny" \
		$(foreach r,$(PRUNE_RATIOS),--reference "splade-tiny pruned $(r) (no training)=$(REFS)/splade-tiny-pruned-$(r)")

clean:
	rm -rf $(VENV) .cache outputs .pytest_cache .ruff_cache
