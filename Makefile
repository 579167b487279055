# The two doors of the README, plus a fast loop for development.
.PHONY: setup demo test test-fast bench

setup:
	bash scripts/setup.sh

# Main job: bundled sample data + tiny model, SFT warm-up then GRPO (vLLM rollout) on CPU.
demo: setup
	.venv/bin/medrl demo --out runs/demo

# Set up from scratch, then run the whole test suite (what CI runs): the fast tier on both cores,
# then the slow tier: the one-rank verl runs (rehearsals, vLLM) two at a time, grouped so that the
# run a module shares stays on one worker; last, one at a time, the two-rank runs and the Slurm
# tests (marker `alone`; tests/conftest.py says why).
# Measured on a quiet 2-core machine (cached setup), slow tier one at a time: 34 min.
test: setup
	.venv/bin/python -m pytest -q -m "not slow" -n 2 $(PYTEST_ARGS)
	.venv/bin/python -m pytest -q -m "slow and not alone" -n 2 --dist loadgroup $(PYTEST_ARGS)
	.venv/bin/python -m pytest -q -m "slow and alone" $(PYTEST_ARGS)

# The quick loop: no end-to-end verl run, no vLLM engine, no verl dataset load over many rows
# (markers slow and verl_load), on both cores. Measured on a quiet 2-core machine: 65 s.
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow and not verl_load" -n 2 $(PYTEST_ARGS)

bench: setup
	for b in benchmarks/bench_*.py; do .venv/bin/python $$b || exit 1; done
