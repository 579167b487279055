# The two doors of the README, plus a fast loop for development.
.PHONY: setup demo test test-fast bench

setup:
	bash scripts/setup.sh

# Main job: bundled sample data + tiny model, SFT warm-up then GRPO (vLLM rollout) on CPU.
demo: setup
	.venv/bin/medrl demo --out runs/demo

# Set up from scratch, then run the whole test suite (what CI runs): the fast tier on both cores,
# then the slow tier on two workers: one runs the verl and vLLM runs one at a time (two at once
# were measured slower on 2 cores, 1.5-2.6x each, and two two-rank runs reached Ray's memory limit),
# the other the rest beside it: a local Slurm's jobs, worker processes, merges (tests/conftest.py).
test: setup
	.venv/bin/python -m pytest -q -m "not slow" -n 2 $(PYTEST_ARGS)
	MEDRL_VERL_RUNS_NICE=10 .venv/bin/python -m pytest -q -m slow -n 2 --dist loadscope $(PYTEST_ARGS)

# The quick loop: no end-to-end verl run, no vLLM engine, no verl dataset load over many rows
# (markers slow and verl_load), on both cores. Measured on a quiet 2-core machine: 70 s (949 tests).
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow and not verl_load" -n 2 $(PYTEST_ARGS)

bench: setup
	for b in benchmarks/bench_*.py; do .venv/bin/python $$b || exit 1; done
