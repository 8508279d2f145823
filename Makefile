# The two commands of the README: `make demo` and `make test`. Each sets up what it needs.
PY := .venv/bin/python

.PHONY: setup demo test check lint bench clean

setup:
	@sh scripts/setup-host

# Build the demo appliance from the bundled offline repository into out/demo/, then boot it
# in QEMU until its login prompt shows on the serial console.
demo: setup
	$(PY) -m doit appliance:demo boottest:demo

# Every test, including the real builds (bundled repository, dnf installs).
test: setup
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -m "" tests

# Fast unit tests only.
check: setup
	$(PY) -m ruff check .
	$(PY) -m mypy
	$(PY) -m pytest -m "not slow and not boot" tests

bench: setup
	$(PY) bench/noop.py
	$(PY) bench/layout.py
	$(PY) bench/formats.py
	$(PY) bench/realistic.py

clean:
	rm -rf cache out
