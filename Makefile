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
	@rm -f $(VENV)/.installed-* && touch $@

run: $(STAMP)
	$(PY) -m blat smoke

test: $(STAMP)
	@# pytest exits 5 when it collects no test; that is not a failure of the suite itself.
	$(PY) -m pytest $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests collected"; rc=0; fi; exit $$rc

clean:
	rm -rf $(VENV) build *.egg-info
