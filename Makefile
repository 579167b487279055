# The two doors of the README, plus a fast loop for development.
.PHONY: setup demo test test-fast bench

setup:
	bash scripts/setup.sh

# Main job: bundled sample data + tiny model, SFT warm-up then GRPO (vLLM rollout) on CPU.
demo: setup
	.venv/bin/medrl demo --out runs/demo

# Set up from scratch, then run the whole test suite (what CI runs): the fast tier on both cores,
# then the slow tier (end-to-end verl runs, each taking the whole machine) one test at a time.
# Two at a time was measured and is no faster on 2 cores: with the slow tier on two xdist workers
# (the verl runs on one, niced; Slurm, merges and data-scale tests on the other; 2026-12-04) it took
# 1,498 s against 1,521 s serially, as each run beside another took up to 2.3x as long (the e2e
# run 458 s against 268 s, the Slurm rehearsal 249 s against 114 s), and two two-rank runs reached
# Ray's memory limit (24 GB) in an earlier try.
test: setup
	.venv/bin/python -m pytest -q -m "not slow" -n 2 $(PYTEST_ARGS)
	.venv/bin/python -m pytest -q -m slow $(PYTEST_ARGS)

# The quick loop: no end-to-end verl run, no vLLM engine, no verl dataset load over many rows
# (markers slow and verl_load), on both cores. Measured on a quiet 2-core machine: 70 s (949 tests).
test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow and not verl_load" -n 2 $(PYTEST_ARGS)

bench: setup
	for b in benchmarks/bench_*.py; do .venv/bin/python $$b || exit 1; done
