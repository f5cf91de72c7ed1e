# virtdoctor: make install | run | test | bench
#
#   make run     .venv, build deps when missing, virtdoctor installed, `virtdoctor check`
#   make test    also the real libvirt/QEMU for live tests (scripts/host-setup.sh), then pytest
#   make bench   cold `virtdoctor check` against `virt-host-validate qemu`, preflight over the
#                corpus against `virt-xml-validate`, 200 domains, explain --log on 100 MB
#
# A re-run is quick: packages are checked with dpkg-query, the venv is reused, and pip only
# runs again when pyproject.toml changes (the install is editable).

VENV    ?= .venv
PYTHON  ?= python3
RUNS    ?= 7
STAMP   := $(VENV)/.virtdoctor-installed

.PHONY: install run test bench host clean-venv

install: $(STAMP)

$(STAMP): pyproject.toml scripts/host-setup.sh
	PYTHON=$(PYTHON) scripts/host-setup.sh --build-deps
	@if [ ! -x $(VENV)/bin/pip ]; then \
		echo "creating $(VENV)"; \
		$(PYTHON) -m venv --clear $(VENV); \
	fi
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -e '.[libvirt,test]'
	touch $@

# A non-zero status means the host has problems (1 warnings, 2 errors): report it, do not
# fail make. 3 and above means virtdoctor itself could not do its job: that fails make.
run: install
	@rc=0; $(VENV)/bin/virtdoctor check || rc=$$?; \
	echo "virtdoctor check exited with status $$rc"; \
	[ $$rc -lt 3 ]

host:
	PYTHON=$(PYTHON) scripts/host-setup.sh

test: install host
	VIRTDOCTOR_REQUIRE_LIVE=1 $(VENV)/bin/python -m pytest -rs tests

bench: install host
	$(VENV)/bin/python bench/check.py --runs $(RUNS)
	$(VENV)/bin/python bench/preflight.py
	$(VENV)/bin/python bench/explain_log.py

clean-venv:
	rm -rf $(VENV)
