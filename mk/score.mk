# Batch scoring of files (issue 23): model_store/score.py. `make score INPUT=in.csv OUTPUT=out/ [MODEL=tag]`;
# SCORE_ARGS passes more options (--workers, --id-column, --explain, --spark, ...). Spark runs on a JDK.
APT_PACKAGES += openjdk-17-jre-headless
SCORE_ARGS ?=

.PHONY: score bench-score
score: model  ## score a CSV/Parquet file, directory or s3:// prefix: INPUT=... OUTPUT=dir [MODEL=tag] [SCORE_ARGS=...]
	$(PY) -m model_store.score --input '$(INPUT)' --output '$(OUTPUT)' $(if $(MODEL),--model '$(MODEL)') $(SCORE_ARGS)

bench-score: model sysdeps  ## the batch-scoring goal alone: 2M-row CSV -> Parquet, local and Spark local[2]
	$(PY) -m loadtest.bench --only score $(BENCH_ARGS)
