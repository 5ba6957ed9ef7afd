# Two commands set up a fresh machine: `make run` (the main job) and `make test` (the test suite).
# Both create or reuse the virtual environment in $(VENV); it is reinstalled when pyproject.toml changes.
PYTHON ?= python3.11
VENV ?= .venv
PY := $(VENV)/bin/python
EXTRAS := model,export,server,dev
STAMP := $(VENV)/.installed-$(EXTRAS)

.PHONY: run test venv clean
venv: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=24"
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]"
	@# Only for the tritonserver binary it ships (Triton integration tests); its own pins clash with ours.
	$(PY) -m pip install --quiet --no-deps "nvidia-pytriton==0.7.0"
	@# The pretrained aisfx audio tower (CC BY 4.0): its weights file only; it pins an old librosa and numpy.
	$(PY) -m pip install --quiet --no-deps "aisfx==0.1.2"
	@rm -f $(VENV)/.installed-* && touch $@

# The embedded default: the BLAT pipeline on real recordings from Debian packages (RECIPE=demo; ci is the small,
# fast set the tests run) exported to an ONNX bundle, served on 127.0.0.1 with an index over the held-out clips.
# Every step skips what is already built, so a second `make run` starts the server at once.
RECIPE ?= demo
RUN_DIR := runs/$(RECIPE)
BUNDLE := $(RUN_DIR)/bundle

run: $(STAMP)
	$(PY) -m blat.pipeline.run --recipe $(RECIPE) --out $(RUN_DIR)
	@test -f $(BUNDLE)/bundle.json || $(PY) -m export bundle --dual $(RUN_DIR)/model/dual.safetensors \
	    --captioner $(RUN_DIR)/model/captioner.safetensors --calibration $(RUN_DIR)/scenes/manifest.jsonl \
	    --metrics $(RUN_DIR)/model/metrics.json --name blat-$(RECIPE) --out $(BUNDLE)
	BLAT_SERVER_SEED_MANIFEST=$(RUN_DIR)/index_seed.jsonl BLAT_SERVER_INGEST_ROOTS='["$(RUN_DIR)"]' \
	    $(PY) -m server --bundle $(BUNDLE) --index-dir $(RUN_DIR)/index

test: $(STAMP)
	@# pytest exits 5 when it collects no test; that is not a failure of the suite itself.
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info
