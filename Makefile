# The two doors of the README.
.PHONY: setup demo test bench

setup:
	bash scripts/setup.sh

# Main job: bundled sample data + tiny model, SFT warm-up then GRPO on CPU.
demo: setup
	.venv/bin/medrl demo --out runs/demo

# Set up from scratch, then run the whole test suite.
test: setup
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

bench: setup
	for b in benchmarks/*.py; do .venv/bin/python $$b || exit 1; done
