# maild: `make run` starts a demo daemon, `make test` runs the whole suite.
# Both create the Python environment (.venv) first; `make test` also installs
# and starts what the tests need.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: env deps run test lint bench clean

# Servers the tests start themselves (each in a temp directory, on 127.0.0.1),
# installed from Debian's packages when missing.
# Each entry is COMMAND:PACKAGE, or /FILE:PACKAGE for a library.
APT_NEEDS := dovecot:dovecot-imapd chromium:chromium pg_ctlcluster:postgresql postfix:postfix \
	/usr/share/perl5/Mail/DKIM/Verifier.pm:libmail-dkim-perl

env: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# The demo: config.toml on SQLite under var/, notices printed by a local
# debugging smarthost on 127.0.0.1:2526, consultas taken on 127.0.0.1:2525.
run: env
	$(BIN)/maild --config config.toml init
	@echo "maild: consultas by SMTP on 127.0.0.1:2525; the knowledge base at http://127.0.0.1:8080/"
	@echo "       outgoing mail is printed below (the demo smarthost on 127.0.0.1:2526)"
	@$(BIN)/python -m aiosmtpd -n -l 127.0.0.1:2526 -c aiosmtpd.handlers.Debugging & \
	  sink=$$!; trap 'kill $$sink 2>/dev/null' EXIT INT TERM; \
	  $(BIN)/maild --config config.toml serve

deps:
	@missing=""; for pair in $(APT_NEEDS); do \
	  cmd=$${pair%%:*}; pkg=$${pair#*:}; \
	  case $$cmd in /*) [ -e $$cmd ] || missing="$$missing $$pkg";; \
	  *) command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || missing="$$missing $$pkg";; esac; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  echo "postfix postfix/main_mailer_type select No configuration" | debconf-set-selections; \
	  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# The whole suite twice: on SQLite, then on a throwaway PostgreSQL cluster.
test: env deps
	$(BIN)/ruff check maild storage cli tests bench
	$(BIN)/pytest -q
	MAILD_TEST_DATABASE=postgresql $(BIN)/pytest -q

lint: env
	$(BIN)/ruff check maild storage cli tests bench

bench: env deps
	$(BIN)/python bench/run.py
	$(BIN)/python bench/imap_sync.py
	$(BIN)/python bench/web.py
	$(BIN)/python bench/thread_lookup.py

clean:
	rm -rf $(VENV) var build dist *.egg-info
