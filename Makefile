# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The long CPU jobs (zoo training, baselines) run ~30% faster with tcmalloc, where it is
# installed (`apt-get install libtcmalloc-minimal4`): glibc's malloc spends a quarter of
# a training step in the kernel. Same numbers (the allocator does not change arithmetic).
TCMALLOC := $(firstword $(wildcard /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4))
PRELOAD := $(if $(TCMALLOC),LD_PRELOAD=$(TCMALLOC))

.PHONY: demo test lint bench clean baselines zoo gallery

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[dev,fastsam]'
	touch $@

# The main job on the embedded default: UAD against every victim present (offline: the tiny zoo).
demo: $(BIN)/.installed
	$(BIN)/uadbench run --attack uad --victims all --out results/demo

# Lint, format check and the whole test suite (benchmarks run once each, as tests).
test: $(BIN)/.installed
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/pytest -q

# Speed benchmarks with their ratio targets asserted.
bench: $(BIN)/.installed
	UADBENCH_BENCH=1 $(BIN)/pytest tests/benchmarks --benchmark-enable -q

# Retrain the whole tiny zoo in place with the shipped recipes (teacher first, then its
# students two at a time; ~13 h on 2 cores: ~5 h, then ~8 h); then `make baselines`. The
# training code is a developer tool of this tree (tools/zoo/, not installed; docs/zoo.md).
# ZOO_FLAGS are tools/zoo/train_all.py's: ZOO_FLAGS=--resume after an interruption; flags
# after `--` go to every `python -m tools.zoo train` (ZOO_FLAGS="-- --steps 2000").
zoo: $(BIN)/.installed
	$(PRELOAD) $(BIN)/python -m tools.zoo.train_all $(ZOO_FLAGS)

# Regenerate the committed CI baselines in results/baselines/ (after retraining the zoo or a
# deliberate change of defaults); `make baselines ONLY=embedded-default` for one of them;
# BASELINE_FLAGS=--resume continues an interrupted build, --compact readies one to commit.
baselines: $(BIN)/.installed
	$(PRELOAD) $(BIN)/python scripts/make_baselines.py $(foreach n,$(ONLY),--only $(n)) $(BASELINE_FLAGS)

# The figure gallery in docs/gallery/: figures of the committed zoo-synthetic baseline and
# of a small run made here (sweep, panels, report screenshot; a few minutes on 2 cores, resumes).
gallery: $(BIN)/.installed
	$(BIN)/python scripts/make_gallery.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .benchmarks

# Mutation testing of the maths (cosmic-ray; not part of `make test`; docs/mutants.md):
# `make mutants AREAS="eval victims"`, areas eval victims attacks stats check (default: all),
# MUTANTS_BUDGET minutes per area, MUTANTS_FLAGS=--resume continues a stopped run.
.PHONY: mutants
MUTANTS_BUDGET ?= 30
mutants: $(BIN)/.installed
	nice -n 19 $(BIN)/python scripts/mutants.py $(foreach a,$(AREAS),--area $(a)) --budget $(MUTANTS_BUDGET) $(MUTANTS_FLAGS)
