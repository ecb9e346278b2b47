# Two commands: `make run` (set up, migrate, serve on http://127.0.0.1:8000) and `make test` (set up, run all tests).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
export CAMPAIGN_VAR_DIR ?= $(CURDIR)/var

.PHONY: run test lint bench soak system-deps browser clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

$(VENV)/.run: $(BIN)/python pyproject.toml
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.test: $(VENV)/.run
	$(BIN)/pip install -q -e '.[test]'
	touch $@

run: $(VENV)/.run
	$(BIN)/campaign keys ensure
	$(BIN)/campaign db upgrade
	@# A broken campaign is reported here and left out by the server, which serves the others (and picks up
	@# the fix when the file is saved): one mistake in one folder must not take the whole site down.
	-$(BIN)/campaign check
	@echo "Organisers: sign in at http://127.0.0.1:8000/organiser/login with CAMPAIGN_ORGANISER_TOKEN if set," \
	  "else with the token in $(CAMPAIGN_VAR_DIR)/organiser.token (created on first start)"
	$(BIN)/campaign serve --host 127.0.0.1 --port 8000

# Debian packages the tests drive: Chromium (browser tests), poppler (pdftotext), wrk (benchmarks), nginx (the
# micro-cache test), SpamAssassin (the mail score test).
system-deps:
	@missing=""; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	command -v pdftotext >/dev/null || missing="$$missing poppler-utils"; \
	command -v wrk >/dev/null || missing="$$missing wrk"; \
	command -v nginx >/dev/null || missing="$$missing nginx-light"; \
	command -v spamassassin >/dev/null || missing="$$missing spamassassin"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing) \
	    || echo "could not install$$missing: tests that need them will be skipped"; \
	fi

lint: $(VENV)/.test
	$(BIN)/ruff check .

test: $(VENV)/.test system-deps lint
	$(BIN)/pytest -q

# Every benchmark (bench/*.py), about 30 minutes here; BENCH_FULL=1 adds the 10 M-signature step of bench/growth.py
# on SQLite and PostgreSQL with export and letters at 10 M (about 25 minutes and 20 GB of disk more).
# py-spy profiles the sign path when its p99 goal is missed (bench/profile.py).
bench: $(VENV)/.test system-deps
	$(BIN)/pip install -q py-spy || echo "py-spy could not be installed: the sign profile will be skipped"
	$(BIN)/python -m bench

soak: $(VENV)/.test system-deps
	$(BIN)/pytest -q -m slow --run-slow

# Translations: collect the strings marked in app/ (N_() and _() in Python, {{ _() }} in templates) into
# app/locale/messages.pot, then merge them into the ru and kk catalogs (created when missing). New strings arrive
# empty (no fuzzy guesses) and strings no longer in the sources are dropped; tests/test_i18n.py lists what is left.
.PHONY: messages
messages: $(VENV)/.run
	$(BIN)/pybabel extract -F app/locale/babel.cfg -k N_ --no-wrap --add-location=file --sort-output \
	  --project=campaign-service -o app/locale/messages.pot .
	for l in ru kk; do \
	  $(BIN)/pybabel update -i app/locale/messages.pot -d app/locale -l $$l --init-missing --no-wrap \
	    --no-fuzzy-matching --ignore-obsolete || exit 1; \
	done

clean:
	rm -rf $(VENV) var .pytest_cache
