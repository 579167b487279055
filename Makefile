# The two doors of the README, plus a fast loop for development.
.PHONY: setup demo test test-fast bench

setup:
	bash scripts/setup.sh

# Main job: bundled sample data + tiny model, SFT warm-up then GRPO (vLLM rollout) on CPU.
demo: setup
	.venv/bin/medrl demo --out runs/demo

# Set up from scratch, then run the whole test suite (what CI runs).
test: setup
	.venv/bin/python -m pytest -q $(PYTEST_ARGS)

# Everything not marked slow (no end-to-end verl runs): about 2 minutes.
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

bench: setup
	for b in benchmarks/bench_*.py; do .venv/bin/python $$b || exit 1; done
