"""Batch scoring checks shared by tests/test_score.py and tests/test_score_spark.py: the real CLI on
real files, answers as /predict's JSON bytes, a real server's /predict_batch answers to compare with."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import requests

from model_store import dataset
from testkit.servers import REPO, environment

ROWS = 400


def score_cli(*args: str, env: dict[str, str | None] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model_store.score", *args], cwd=REPO, capture_output=True, text=True,
                          env=environment(env or {}), timeout=300)  # fmt: skip


def records(n: int = ROWS, seed: int = 5) -> list[dict]:
    return dataset.sample_records(np.random.default_rng(seed), n)


def answers(table: pa.Table, fields: list[str]) -> list[bytes]:
    """Each output row's answer fields as /predict's JSON bytes."""
    return [orjson.dumps({name: row[name] for name in fields}) for row in table.select(fields).to_pylist()]


def served_answers(url: str, batch: list[dict], route: str = "/predict_batch", key: str = "predictions") -> list[bytes]:
    answer = requests.post(f"{url}{route}", data=orjson.dumps({"instances": batch}), headers={"Content-Type": "application/json"}, timeout=60)
    assert answer.status_code == 200, answer.text
    records_ = answer.json()[key]
    for i, record in enumerate(records_):  # each record's own id (<the request's X-Request-ID>-<index>), not an answer field
        assert record.pop("request_id") == f"{answer.headers['x-request-id']}-{i}", record
    return [orjson.dumps(p) for p in records_]


def output(out: Path) -> pa.Table:
    parts = sorted(p for p in out.iterdir() if p.suffix == ".parquet")
    return pa.concat_tables([pq.read_table(p) for p in parts])


@pytest.fixture(scope="module")
def default_bundle(bentoml_home, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("bundle") / "model.bundle"
    result = score_cli("--export-model", str(path))
    assert result.returncode == 0, result.stderr
    return path


@pytest.fixture(scope="module")
def feature_files(tmp_path_factory) -> tuple[list[dict], Path, Path]:
    """The same records as a CSV (with an id column) and as a Parquet file of two row groups."""
    batch = records()
    table = pa.table({"customer_id": [f"c{i:04d}" for i in range(len(batch))], **{n: [r[n] for r in batch] for n in dataset.FEATURE_NAMES}})
    folder = tmp_path_factory.mktemp("features")
    pacsv.write_csv(table, folder / "features.csv")
    pq.write_table(table, folder / "features.parquet", row_group_size=ROWS // 2)
    return batch, folder / "features.csv", folder / "features.parquet"


def bad_csv(tmp_path: Path) -> Path:
    """Five bad rows among good ones: text, an empty cell, infinity, NaN, a value out of range."""
    batch = records(50)
    lines = [",".join(dataset.FEATURE_NAMES)] + [",".join(repr(r[n]) for n in dataset.FEATURE_NAMES) for r in batch]
    def put(row: int, column: int, value: str) -> None:
        cells = lines[row].split(",")
        cells[column] = value
        lines[row] = ",".join(cells)
    put(3, 0, "abc")
    put(9, 2, "")
    put(12, 4, "inf")
    put(20, 5, "nan")
    put(31, 0, "-7")  # feat1 (age) is 0..120
    path = tmp_path / "bad.csv"
    path.write_text("\n".join(lines) + "\n")
    return path
