"""Capture with a real `bentoml serve`: exactly the answered records, across 2 workers and a SIGTERM
mid-load; S3 through moto's server mode, a failing bucket; quality report and retraining on them."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import requests

from testkit.probes import exposed
from testkit.servers import REPO, free_port
from model_store import captured, dataset

REQUESTS = 10_000
SIGTERM_AFTER = 5_000  # requests answered before the server is told to stop
BATCH_RECORDS = 8
CLIENTS = 16


def mixed_request(i: int) -> tuple[str, int]:
    """Request i's route and its record count: mostly /predict, some batches and explanations."""
    if i % 20 == 7:
        return "/predict_batch", BATCH_RECORDS
    if i % 50 == 11:
        return "/explain", 1
    if i % 200 == 13:
        return "/explain_batch", 2
    return "/predict", 1


def send_mixed(url: str, x: np.ndarray, y: np.ndarray, on_answer=None) -> tuple[dict[str, int], Counter]:
    """REQUESTS requests from CLIENTS threads; returns {record id: true label} of the answers with
    200 and the count of each outcome. Record ids come from X-Request-ID (the client's for even i,
    the server's for odd i) and, for batches, the answer's request_id."""
    answered: dict[str, int] = {}
    outcomes: Counter = Counter()
    lock = threading.Lock()
    local = threading.local()
    names = dataset.FEATURE_NAMES

    def one(i: int) -> None:
        path, n = mixed_request(i)
        start = (i * BATCH_RECORDS) % (len(x) - BATCH_RECORDS)
        records = [dict(zip(names, map(float, row))) for row in x[start : start + n]]
        body = records[0] if n == 1 and path in ("/predict", "/explain") else {"instances": records}
        headers = {"X-Request-ID": f"t-{i}"} if i % 2 == 0 else {}
        session = getattr(local, "session", None) or requests.Session()
        local.session = session
        try:
            answer = session.post(url + path, json=body, headers=headers, timeout=60)
        except requests.RequestException:
            with lock:
                outcomes["no answer"] += 1
            return
        with lock:
            outcomes[answer.status_code] += 1
            if answer.status_code != 200:
                return
            request_id = answer.headers["X-Request-ID"]
            assert i % 2 or request_id == f"t-{i}", "the client's valid id is kept"
            if "predictions" in body or "instances" in body:
                items = answer.json()["predictions" if path == "/predict_batch" else "explanations"]
                for k, item in enumerate(items):
                    assert item["request_id"] == f"{request_id}-{k}"
                    answered[item["request_id"]] = int(y[start + k])
            else:
                answered[request_id] = int(y[start])
            if on_answer is not None:
                on_answer(len(answered))

    with ThreadPoolExecutor(CLIENTS) as pool:
        list(pool.map(one, range(REQUESTS)))
    return answered, outcomes


@pytest.fixture(scope="module")
def captured_load(server_factory, tmp_path_factory):
    """10,000 mixed requests at 100 % capture on 2 workers, SIGTERM once 5,000 were answered."""
    directory = tmp_path_factory.mktemp("capture") / "records"
    server = server_factory({"XGB_CAPTURE": "100", "XGB_CAPTURE_URI": str(directory), "XGB_CAPTURE_FLUSH_SECONDS": "2"}, workers=2)
    x, y = dataset.generate(4_000, seed=11)  # records the model has not seen, with their true labels
    stopped = threading.Event()

    def stop_midway(answered: int) -> None:
        if answered >= SIGTERM_AFTER and not stopped.is_set():
            stopped.set()
            server.proc.send_signal(signal.SIGTERM)

    answered, outcomes = send_mixed(server.url, x, y, stop_midway)
    assert server.proc.wait(60) == 0, server.log()[-2000:]
    return directory, answered, outcomes, server


def test_exactly_the_answered_records_are_captured_across_workers_and_sigterm(captured_load):
    directory, answered, outcomes, server = captured_load
    assert outcomes[200] > SIGTERM_AFTER // 2 and outcomes["no answer"] > 0, f"the SIGTERM came mid-load: {outcomes}"
    assert set(outcomes) <= {200, "no answer"}, outcomes
    table = captured.read(str(directory))
    ids = table.column("request_id").to_pylist()
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    assert not duplicates, f"{len(duplicates)} records captured twice, e.g. {duplicates[:3]}"
    assert set(ids) == set(answered), (f"{len(set(answered) - set(ids))} answered but not captured, "
                                       f"{len(set(ids) - set(answered))} captured but not answered")  # fmt: skip
    writers = {p.name.split("-")[0] for p in directory.rglob("*.parquet")}  # files are named <pid>-<sequence>-<random>
    assert len(writers) == 2, f"both workers wrote records: {writers}"
    assert not list(directory.rglob(".*")), "no half-written file left"
    assert "Completed cleanup hook: write_last_captured_records" in server.log()


def test_the_records_read_back_with_the_schemas_types_by_pyarrow_and_pandas(captured_load):
    import pyarrow as pa

    directory, answered, _, _ = captured_load
    table = captured.read(str(directory))
    for f in dataset.SCHEMA.features:
        expected = pa.float64() if f.kind == "continuous" else pa.bool_()
        assert table.schema.field(f.name).type == expected, f.name
    frame = pd.read_parquet(directory)
    assert len(frame) == len(answered)
    assert str(frame["feat1"].dtype) == "float64" and str(frame["feat11"].dtype) == "bool"
    assert str(frame["timestamp"].dtype) == "datetime64[ms, UTC]" and set(frame["role"]) == {"primary"}
    assert frame["probabilities"].map(len).eq(dataset.N_CLASSES).all() and frame["predicted_class"].between(0, 4).all()
    bytes_per_record = sum(p.stat().st_size for p in directory.rglob("*.parquet")) / len(frame)
    print(f"\ncapture: {len(frame):,} records, {bytes_per_record:.1f} bytes per record on disk")


def write_labels(path: Path, truth: dict[str, int], flip_every_other: bool) -> Path:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["request_id", "label"])
        for n, (record, label) in enumerate(sorted(truth.items())):
            writer.writerow([record, (label + 2) % dataset.N_CLASSES if flip_every_other and n % 2 else label])
    return path


def quality(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model_store.quality", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_quality_report_shows_the_drop_when_half_of_the_labels_are_flipped(captured_load, tmp_path):
    directory, answered, _, _ = captured_load
    honest = quality("--capture", str(directory), "--labels", str(write_labels(tmp_path / "true.csv", answered, False)))
    assert honest.returncode == 0, honest.stdout + honest.stderr
    assert "no version worse than its training metrics" in honest.stdout
    plot = tmp_path / "quality.png"
    flipped = quality("--capture", str(directory), "--labels", str(write_labels(tmp_path / "flipped.csv", answered, True)), "--plot", str(plot))
    print(flipped.stdout)
    assert flipped.returncode == 1, flipped.stdout + flipped.stderr
    def overall_accuracy(out: str) -> float:
        return next(float(line.split()[2]) for line in out.splitlines() if line.startswith("[quality]   accuracy"))

    true_accuracy, flipped_accuracy = overall_accuracy(honest.stdout), overall_accuracy(flipped.stdout)
    assert flipped_accuracy < 0.6 * true_accuracy, (true_accuracy, flipped_accuracy)  # half the labels wrong: about half as accurate
    assert "WORSE than training by more than 5%: accuracy" in flipped.stdout
    assert plot.stat().st_size > 10_000 and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quality_refuses_labels_that_match_nothing(captured_load, tmp_path):
    directory, *_ = captured_load
    (tmp_path / "none.csv").write_text("request_id,label\nnot-captured,1\n")
    result = quality("--capture", str(directory), "--labels", str(tmp_path / "none.csv"))
    assert result.returncode == 2 and "no label in" in result.stderr, result.stderr


def test_a_model_trains_on_the_captured_records_and_their_labels(captured_load, tmp_path):
    directory, answered, _, _ = captured_load
    labels = write_labels(tmp_path / "true.csv", answered, False)
    home = tmp_path / "store"  # not the session's store: its latest model stays the one the tests serve
    run = subprocess.run([sys.executable, "train_export.py", "--data", str(directory), "--labels", str(labels)], cwd=REPO,
                         capture_output=True, text=True, timeout=300, env={**os.environ, "BENTOML_HOME": str(home)})  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{len(answered)} rows x 36 features (10 continuous, 26 binary)" in run.stdout, run.stdout
    broken = tmp_path / "bad.csv"
    broken.write_text("request_id,label\n" + "".join(f"{r},{'a' if n % 3 else 'b'}\n" for n, r in enumerate(sorted(answered)[:10])))
    refused = subprocess.run([sys.executable, "train_export.py", "--data", str(directory), "--labels", str(broken)], cwd=REPO,
                             capture_output=True, text=True, timeout=300, env={**os.environ, "BENTOML_HOME": str(home)})  # fmt: skip
    assert refused.returncode == 2 and "at least 20 are needed" in refused.stderr, refused.stderr


# --- S3 ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moto_s3():
    from moto.server import ThreadedMotoServer

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    env = {"AWS_ENDPOINT_URL_S3": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_REGION": "us-east-1"}  # fmt: skip
    import boto3

    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket="captures")
    yield env
    server.stop()


def send_predictions(url: str, n: int) -> set[str]:
    x, _ = dataset.generate(n, seed=5)
    ids = set()
    with requests.Session() as session:
        for i, row in enumerate(x):
            answer = session.post(f"{url}/predict", json=dict(zip(dataset.FEATURE_NAMES, map(float, row))), timeout=30)
            assert answer.status_code == 200, answer.text
            ids.add(answer.headers["X-Request-ID"])
        batch = session.post(f"{url}/predict_batch", json={"instances": [dict(zip(dataset.FEATURE_NAMES, map(float, r))) for r in x[:5]]}, timeout=30)
        assert batch.status_code == 200
        ids |= {p["request_id"] for p in batch.json()["predictions"]}
    return ids


def test_capture_to_s3_through_multipart_capable_managed_transfer(server_factory, moto_s3, monkeypatch):
    server = server_factory({**moto_s3, "XGB_CAPTURE": "100", "XGB_CAPTURE_URI": "s3://captures/traffic/prod", "XGB_CAPTURE_FLUSH_SECONDS": "1"})
    sent = send_predictions(server.url, 200)
    assert server.stop() == 0
    for name, value in moto_s3.items():
        monkeypatch.setenv(name, value)
    table = captured.read("s3://captures/traffic/prod")
    ids = table.column("request_id").to_pylist()
    assert sorted(ids) == sorted(sent), f"{len(ids)} captured, {len(sent)} answered"
    import boto3

    keys = [o["Key"] for o in boto3.client("s3").list_objects_v2(Bucket="captures", Prefix="traffic/prod/")["Contents"]]
    assert all(k.startswith("traffic/prod/model_version=") and "/hour=" in k and k.endswith(".parquet") for k in keys), keys


def test_a_failing_bucket_drops_and_counts_records_and_requests_still_succeed(server_factory, moto_s3):
    server = server_factory({**moto_s3, "XGB_CAPTURE": "100", "XGB_CAPTURE_URI": "s3://no-such-bucket/x", "XGB_CAPTURE_FLUSH_SECONDS": "0.5"})
    sent = send_predictions(server.url, 100)  # every answer a 200 (asserted there)
    series = 'xgb_capture_dropped_total{reason="sink_error"}'
    deadline = time.monotonic() + 30
    while exposed(server.url, series) < len(sent) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert exposed(server.url, series) == len(sent), server.log()[-2000:]
    assert exposed(server.url, "xgb_capture_records_total") == 0
    assert "capture: writing" in server.log() and "NoSuchBucket" in server.log()


# --- a candidate next to the primary ---------------------------------------------------------------

@pytest.mark.parametrize("mode", ["shadow", "canary"])
def test_a_candidates_records_are_captured_with_their_role(server_factory, bentoml_home, tmp_path, mode):
    import bentoml

    from loadtest.bench_rollout import candidate_store

    primary = str(bentoml.models.get("xgb_classifier:latest").tag)
    home, candidate = candidate_store(tmp_path, primary)  # a copy of the primary under another version, in a store of its own
    directory = tmp_path / "records"
    server = server_factory({"BENTOML_HOME": str(home), "MODEL_TAG": primary, "XGB_CANDIDATE_TAG": candidate, "XGB_CANDIDATE_MODE": mode,
                             "XGB_CANDIDATE_PERCENT": "50", "XGB_CAPTURE": "100", "XGB_CAPTURE_URI": str(directory)})  # fmt: skip
    x, _ = dataset.generate(200, seed=3)
    answered: dict[str, str] = {}
    with requests.Session() as session:
        for row in x:
            answer = session.post(f"{server.url}/predict", json=dict(zip(dataset.FEATURE_NAMES, map(float, row))), timeout=30)
            assert answer.status_code == 200, answer.text
            answered[answer.headers["X-Request-ID"]] = answer.json()["model_version"]
    assert server.stop() == 0
    frame = pd.read_parquet(directory)
    by_role = {role: part for role, part in frame.groupby("role", observed=True)}
    primary_version, candidate_version = primary.split(":")[1], candidate.split(":")[1]
    if mode == "shadow":
        assert set(by_role) == {"primary", "shadow"}, set(by_role)
        for role, version in (("primary", primary_version), ("shadow", candidate_version)):
            part = by_role[role]
            assert sorted(part["request_id"]) == sorted(answered) and set(part["model_version"]) == {version}, role
        both = by_role["primary"].merge(by_role["shadow"], on="request_id")
        assert (both["predicted_class_x"] == both["predicted_class_y"]).all(), "the copy answers as the primary does"
    else:
        assert set(by_role) == {"primary", "canary"}, set(by_role)
        assert sorted(frame["request_id"]) == sorted(answered), "each answer once"
        captured_version = dict(zip(frame["request_id"], frame["model_version"]))
        assert captured_version == answered, "each record under the version that answered it"
        assert set(by_role["canary"]["model_version"]) == {candidate_version} and 40 <= len(by_role["canary"]) <= 160
