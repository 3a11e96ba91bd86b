# Benchmarks (issue 3): our service against the seed-style FastAPI baseline on the same box.
# `make bench` takes ~4 minutes, writes loadtest/results/bench.{json,png}, prints a table, and exits
# non-zero if a goal is missed. BENCH_ARGS passes options through, e.g. BENCH_ARGS="--rounds 5".
APT_PACKAGES += wrk hey
BENCH_ARGS ?=

.PHONY: bench bench-tracing bench-alternatives
bench: model sysdeps  ## benchmark /predict, /predict_batch, warm start: ours vs the seed-style baseline
	$(PY) -m loadtest.bench $(BENCH_ARGS)

bench-tracing: model sysdeps  ## goal 8 alone: /predict with tracing at the default 1 % vs off (bench_tracing.json)
	$(PY) -m loadtest.bench --only tracing $(BENCH_ARGS)

bench-alternatives: model sysdeps  ## measure the API service + bentoml.depends model service design (optional)
	$(PY) -m loadtest.alternatives.bench_depends $(BENCH_ARGS)

.PHONY: bench-capture
bench-capture: model sysdeps  ## goal 7 alone: what capture at 100 % costs /predict and /predict_batch (run on a quiet box)
	$(PY) -m loadtest.bench_capture $(BENCH_ARGS)
