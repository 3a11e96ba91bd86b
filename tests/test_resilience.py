"""How the service fails: overload, SIGTERM with requests in flight, a killed worker, fuzzing.

Each test drives a real `bentoml serve` process of its own, since most of them hurt it.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from testkit.waiting import NotReady, wait_until
from testkit.probes import fuzz, meanwhile, read_response, samples, total
from testkit.servers import REPO, listeners, worker_pids
from model_store.dataset import EXAMPLE_RECORD, sample_records


def hey(url: str, *args: str, body: str | None = None, timeout: float = 300) -> str:
    command = ["hey", *args]
    if body is not None:
        command += ["-m", "POST", "-T", "application/json", "-D", body]
    return subprocess.run([*command, url], capture_output=True, text=True, timeout=timeout).stdout


def status_counts(hey_output: str) -> dict[int, int]:
    return {int(code): int(n) for code, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", hey_output)}


def burst(url: str, path: str, body: bytes, n: int) -> list[tuple[int, dict[str, str], bytes]]:
    """n POSTs sent at once, each on its own connection (raw sockets: no client-side pool or queue); their answers."""
    import http.client

    host, port = url.removeprefix("http://").split(":")
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
               f"Content-Length: {len(body)}\r\n\r\n").encode() + body  # fmt: skip
    sockets = [socket.create_connection((host, int(port)), timeout=60) for _ in range(n)]
    try:
        for sock in sockets:
            sock.sendall(request)
        answers = []
        for sock in sockets:
            response = http.client.HTTPResponse(sock)
            response.begin()
            answers.append((response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()))
        return answers
    finally:
        for sock in sockets:
            sock.close()


@pytest.fixture
def record_file(tmp_path) -> str:
    path = tmp_path / "record.json"
    path.write_text(json.dumps(EXAMPLE_RECORD))
    return str(path)


def test_overload_answers_only_200_or_503_with_retry_after_and_health_stays_fast(server_factory, record_file):
    server = server_factory({"XGB_MAX_INFLIGHT": "64"})
    with meanwhile(lambda session: session.get(f"{server.url}/healthz", timeout=5), pause=0.1) as health:
        output = hey(f"{server.url}/predict", "-z", "10s", "-c", "512", body=record_file)
    counts = status_counts(output)
    health_latencies = [seconds for _, seconds in health]
    print(f"512 connections: status counts {counts}, health p100 {max(health_latencies) * 1000:.0f} ms over {len(health_latencies)} probes")
    assert counts.get(200, 0) > 0 and set(counts) <= {200, 429, 503}, output
    assert "Error distribution" not in output, output  # no resets, no timeouts
    assert {status for status, _ in health} == {200}
    assert max(health_latencies) < 1.0

    assert counts.get(503, 0) >= 1, f"512 connections against 2 x 64 slots shed nothing: {counts}"

    # A rejected request says when to retry; the service is back to normal at once after the load.
    answers = burst(server.url, "/predict", json.dumps(EXAMPLE_RECORD).encode(), 400)
    rejected = [(headers, body) for status, headers, body in answers if status == 503]
    print(f"400 requests at once: {len(answers) - len(rejected)} answered, {len(rejected)} refused")
    assert rejected and {status for status, _, _ in answers} <= {200, 503}
    assert all(headers.get("retry-after") == "1" and "overloaded" in json.loads(body)["error"] for headers, body in rejected)
    wait_until(lambda: requests.post(f"{server.url}/predict", json=EXAMPLE_RECORD, timeout=5).status_code == 200,
               5, "/predict back to normal (a 200) within 5 s")


def test_sigterm_finishes_every_request_in_flight(server_factory):
    from stalling_service import STALL_MARKER

    # Each batch holds one of 8 batch threads for 3 s: all 32 are in flight together for seconds,
    # however slowly a loaded machine sends them.
    server = server_factory({"XGB_TEST_STALL_S": "3", "XGB_BATCH_THREADS": "8", "XGB_BATCH_QUEUE": "32"},
                            service=("tests.stalling_service:XGBoostService",))  # fmt: skip
    records = sample_records(np.random.default_rng(1), 1000)
    records[0] = {**records[0], next(iter(EXAMPLE_RECORD)): STALL_MARKER}
    body = json.dumps({"instances": records})

    def send(_: int) -> int:
        return requests.post(f"{server.url}/predict_batch", data=body, headers={"Content-Type": "application/json"}, timeout=120).status_code

    with ThreadPoolExecutor(32) as pool:
        futures = [pool.submit(send, i) for i in range(32)]
        deadline = time.monotonic() + 30
        while (seen := total(samples(server.url), "bentoml_service_request_in_progress", endpoint="/predict_batch")) < 32:
            assert time.monotonic() < deadline, f"only {seen} of 32 requests in flight"
            assert not any(f.done() for f in futures), "a request finished before all were in flight"
            time.sleep(0.05)
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        statuses = [f.result() for f in futures]
    exit_code = server.proc.wait(60)
    drained_in = time.monotonic() - started
    print(f"SIGTERM with 32 x 1000-record batches in flight: statuses {sorted(set(statuses))}, exited {exit_code} after {drained_in:.1f} s")
    assert statuses == [200] * 32
    assert exit_code == 0
    assert drained_in < 30, "must exit well inside ECS's stop timeout"


def test_a_killed_worker_is_replaced_and_the_service_keeps_answering(server_factory, record_file):
    server = server_factory()
    before = worker_pids(server)
    assert len(before) == 2
    result: dict[str, str] = {}
    load = threading.Thread(target=lambda: result.update(out=hey(f"{server.url}/predict", "-z", "8s", "-c", "16", body=record_file)))
    load.start()
    time.sleep(2)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    wait_until(lambda: len(worker_pids(server) - {victim}) >= 2, 30, "the killed worker's replacement")
    replaced_in = time.monotonic() - killed_at
    load.join()
    output = result["out"]
    counts = status_counts(output)
    failed = sum(n for code, n in counts.items() if code != 200) + sum(
        int(n) for n in re.findall(r"^\s+\[(\d+)\]\s", output.split("Error distribution:")[-1], re.M)
    ) * ("Error distribution:" in output)
    print(f"worker SIGKILL under 16 connections: replaced in {replaced_in:.1f} s, {counts.get(200, 0)} ok, {failed} failed")
    assert counts.get(200, 0) > 1000
    # Each of the 16 connections may lose the request in flight on the killed worker, and its
    # reconnect may land in the dying worker's accept queue (each worker has its own listening
    # socket) and be reset once. Anything beyond that is lost work.
    assert failed <= 2 * 16, "at most the requests the killed worker held, and one reconnect each, may fail"
    assert requests.post(f"{server.url}/predict", json=EXAMPLE_RECORD, timeout=10).status_code == 200
    # The replacement listens on a socket of its own once it has started; the dead worker's is gone.
    port = int(server.url.rsplit(":", 1)[1])
    try:
        wait_until(lambda: sorted(map(sorted, listeners(port))) == sorted([pid] for pid in worker_pids(server)), 60,
                   "one listening socket per live worker", 0.2)
    except NotReady:
        pytest.fail(f"listening sockets {listeners(port)}, workers {worker_pids(server)}")


def serve_until_exit(env: dict[str, str], timeout: float = 120, service: tuple[str, ...] = ("service:XGBoostService",)) -> subprocess.CompletedProcess:
    from testkit.servers import BENTOML, free_port
    return subprocess.run(
        [BENTOML, "serve", *service, "--port", str(free_port())],
        cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=timeout,
    )


def test_startup_refuses_a_missing_model_naming_tag_and_fix(bentoml_home):
    result = serve_until_exit({"MODEL_TAG": "xgb_classifier:nosuchversion"})
    assert result.returncode != 0
    assert "xgb_classifier:nosuchversion" in result.stderr and "make train" in result.stderr


@pytest.mark.parametrize("service", [(), ("service:XGBoostService",)], ids=["bentoml serve", "bentoml serve service:XGBoostService"])
def test_an_empty_store_stops_serve_with_one_line_naming_the_store_and_the_command(tmp_path, service):
    result = serve_until_exit({"BENTOML_HOME": str(tmp_path)}, service=service)
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], result.stdout + result.stderr
    assert f"not in the BentoML store {tmp_path / 'models'}" in lines[0] and "run `make train`" in lines[0], lines


def test_startup_refuses_a_corrupt_model(bentoml_home, tmp_path):
    import shutil

    import bentoml

    model = bentoml.models.get("xgb_classifier:latest")
    broken_home = tmp_path / "home"
    shutil.copytree(os.path.dirname(model.path), broken_home / "models" / "xgb_classifier")
    (broken_home / "models" / "xgb_classifier" / model.tag.version / "booster.ubj").write_bytes(b"not a model")
    result = serve_until_exit({"BENTOML_HOME": str(broken_home)})
    assert result.returncode != 0
    assert f"{model.tag}' is corrupt" in result.stderr and "make train" in result.stderr


def test_fuzzing_finds_no_server_errors_and_no_schema_violations(live_server, tmp_path):
    fuzz(live_server, tmp_path, max_examples=40)


def test_a_client_that_stalls_mid_body_gets_408_and_frees_its_slot(server_factory):
    server = server_factory({"XGB_REQUEST_TIMEOUT_S": "1"}, workers=1)
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 500\r\n\r\n")
        time.sleep(0.2)
        sock.sendall(b'{"feat1": 55.0, ')  # then nothing: the rest never comes
        started = time.monotonic()
        answer = read_response(sock)
        waited = time.monotonic() - started
    status_line, _, rest = answer.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 408 Request Timeout", answer
    assert json.loads(rest.split(b"\r\n\r\n", 1)[1])["error"].startswith("request body not received within 1 s")
    assert waited < 5
    assert requests.post(f"{server.url}/predict", json=EXAMPLE_RECORD, timeout=10).status_code == 200


@pytest.mark.parametrize("path", ["/predict", "/predict_batch"])
def test_a_prediction_that_stalls_gets_504_at_the_request_timeout(server_factory, path):
    from stalling_service import STALL_MARKER

    stall_s = 4.0
    server = server_factory({"XGB_REQUEST_TIMEOUT_S": "1", "XGB_TEST_STALL_S": str(stall_s)}, workers=1,
                            service=("tests.stalling_service:XGBoostService",))  # fmt: skip
    stalled = {**EXAMPLE_RECORD, next(iter(EXAMPLE_RECORD)): STALL_MARKER}
    body = stalled if path == "/predict" else {"instances": [EXAMPLE_RECORD, stalled]}
    started = time.monotonic()
    response = requests.post(f"{server.url}{path}", json=body, timeout=30)
    waited = time.monotonic() - started
    assert response.status_code == 504, response.text
    assert response.json()["error"] == "the prediction did not finish within 1 s (XGB_REQUEST_TIMEOUT_S)"
    assert 1.0 <= waited < stall_s - 1, f"answered after {waited:.2f} s"
    # The stalled call still finishes in the background; then the route answers as usual.
    good = EXAMPLE_RECORD if path == "/predict" else {"instances": [EXAMPLE_RECORD]}
    time.sleep(stall_s - waited + 0.5)
    assert requests.post(f"{server.url}{path}", json=good, timeout=30).status_code == 200


def test_a_burst_of_large_batches_is_bounded_and_predict_keeps_answering(server_factory):
    from stalling_service import STALL_MARKER

    # Each batch holds the batch thread for 1 s, as a large batch on a slow model would.
    server = server_factory({"XGB_TEST_STALL_S": "1"}, workers=1, service=("tests.stalling_service:XGBoostService",))
    records = sample_records(np.random.default_rng(5), 2000)
    records[0] = {**records[0], next(iter(EXAMPLE_RECORD)): STALL_MARKER}
    body = json.dumps({"instances": records}).encode()

    def post_batch(_: int) -> requests.Response:
        return requests.post(f"{server.url}/predict_batch", data=body, headers={"Content-Type": "application/json"}, timeout=120)

    with meanwhile(lambda session: session.post(f"{server.url}/predict", json=EXAMPLE_RECORD, timeout=30), pause=0.05) as predicts:
        with ThreadPoolExecutor(16) as pool:
            batches = list(pool.map(post_batch, range(16)))
    statuses, latencies = [status for status, _ in predicts], [seconds for _, seconds in predicts]
    codes = sorted(r.status_code for r in batches)
    print(f"16 slow 2000-record batches at once: {codes.count(200)} answered, {codes.count(503)} refused; "
          f"/predict meanwhile: {len(latencies)} probes, max {max(latencies) * 1000:.0f} ms")  # fmt: skip
    assert set(codes) <= {200, 503}, codes
    # XGB_BATCH_THREADS=2 run, XGB_BATCH_QUEUE=8 wait: the rest are refused at once.
    assert 10 <= codes.count(200) < 16, codes
    refused = [r for r in batches if r.status_code == 503]
    assert all(r.headers["retry-after"] == "1" and "overloaded" in r.json()["error"] for r in refused)
    assert statuses and set(statuses) == {200}, statuses
    assert max(latencies) < 2.0, "/predict must keep answering while the batches run"


def test_a_bad_setting_stops_serve_with_one_line_naming_the_variable(bentoml_home):
    result = serve_until_exit({"XGB_MAX_INFLIGHT": "many"})
    assert result.returncode != 0
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in lines[0], result.stdout + result.stderr
    assert "XGB_MAX_INFLIGHT='many' is invalid" in lines[0] and "allowed: an integer >= 1" in lines[0], lines
