"""How the service runs: uvloop + httptools in every worker, adaptive batching under concurrency,
BentoML and uvicorn internals still where serving/bentoml_internals.py and serving/uvicorn_internals.py
expect them, and `bentoml build`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import bentoml
import pytest
import requests

from testkit.servers import BENTOML, REPO, listeners, worker_pids
from testkit.waiting import NotReady, wait_until
from model_store import load_bundle
from model_store.dataset import EXAMPLE_RECORD
from serving import bentoml_internals, uvicorn_internals


def test_every_worker_runs_uvloop_and_httptools(live_server_process):
    server = live_server_process  # 2 workers
    # /readyz answers once one worker is up, and httptools' parser is loaded with the first
    # connection a worker accepts: keep sending work until both workers show both libraries.
    seen: dict = {}

    def both_workers_run_both() -> bool:
        subprocess.run(["hey", "-n", "200", "-c", "16", f"{server.url}/livez"], capture_output=True, timeout=120, check=True)
        pids = worker_pids(server)
        seen["missing"] = {
            pid: [lib for lib, pattern in LIBRARIES.items() if not re.search(pattern, Path(f"/proc/{pid}/maps").read_text())]
            for pid in pids
        }
        return len(pids) == 2 and not any(seen["missing"].values())

    try:
        wait_until(both_workers_run_both, 90, "both workers to load uvloop and httptools", 0.5)
    except NotReady as exc:
        pytest.fail(f"{exc}: workers are missing {seen.get('missing')}")


LIBRARIES = {"uvloop": r"uvloop/loop\.cpython", "httptools": r"httptools/parser/parser\.cpython"}


def test_worker_count_follows_the_env_override(server_factory):
    server = server_factory(workers=1)
    assert len(worker_pids(server)) == 1


def batch_stats(url: str) -> tuple[float, float]:
    text = requests.get(f"{url}/metrics", timeout=10).text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith("bentoml_service_adaptive_batch_size_sum"):
            total += float(line.split()[-1])
        elif line.startswith("bentoml_service_adaptive_batch_size_count"):
            count += float(line.split()[-1])
    return total, count


def test_concurrent_single_records_are_batched_with_zero_errors(live_server, tmp_path):
    body = tmp_path / "body.json"
    body.write_text(json.dumps(EXAMPLE_RECORD))
    sum0, count0 = batch_stats(live_server)
    result = subprocess.run(
        ["hey", "-n", "4000", "-c", "32", "-m", "POST", "-T", "application/json", "-D", str(body), f"{live_server}/predict"],
        capture_output=True, text=True, timeout=300,
    )
    assert "[200]\t4000 responses" in result.stdout, result.stdout
    assert "Error distribution" not in result.stdout, result.stdout
    sum1, count1 = batch_stats(live_server)
    assert sum1 - sum0 == 4000, "every request must pass through BentoML's batch dispatcher"
    mean_batch = (sum1 - sum0) / (count1 - count0)
    print(f"mean adaptive batch size under 32 connections: {mean_batch:.1f}")
    assert mean_batch > 1.5


def test_bentoml_internals_are_where_the_fast_path_expects_them(bentoml_home):
    assert bentoml.__version__ == bentoml_internals.BENTOML_VERSION, (
        "BentoML changed version: re-check serving/bentoml_internals.py against it, then update BENTOML_VERSION"
    )
    from service import XGBoostService

    app = XGBoostService.to_asgi()
    factory = bentoml_internals.find_app_factory(app, "predict_rows")
    assert callable(factory.batch_infer)
    with pytest.raises(bentoml_internals.BentoMLInternalsChanged):
        bentoml_internals.find_app_factory(app, "no_such_api")
    bentoml_internals.dispatch_without_holding(factory, "predict_rows")
    optimizer = factory.dispatchers["predict_rows"].optimizer
    assert isinstance(optimizer, bentoml_internals.NoHoldOptimizer)
    for n in (1, 4, 16, 32, 8):
        optimizer.log_outbound(n=n, wait=0.02, duration=0.0003 + n * 0.00001)
    optimizer.trigger_refresh()
    assert optimizer.wait == 0.0 and optimizer.o_a > 0, "the batch cost is still fitted, the hold time is not"
    instance = XGBoostService()
    bentoml_internals.bind_api_once(instance, "predict_rows")
    assert getattr(instance, "predict_rows") is getattr(instance, "predict_rows"), "binding must be cached"
    assert callable(getattr(instance, "predict_rows").local)


def test_bentoml_build_packs_service_code_and_model(bentoml_home):
    result = subprocess.run([BENTOML, "build", "--output", "tag"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    tag = result.stdout.strip().splitlines()[-1].replace("__tag__:", "")
    bento = bentoml.get(tag)
    src = Path(bento.path) / "src"
    for path in ("service.py", "serving/fastpath.py", "model_store/schema.py"):
        assert (src / path).exists(), f"{path} missing from the Bento"
    assert not (src / "tests").exists() and not (src / "infra_pulumi").exists()
    assert [str(m.tag) for m in bento.info.all_models] == [load_bundle().tag], "the served model must be in the Bento"
    requirements = (Path(bento.path) / "env" / "python" / "requirements.txt").read_text()
    assert "xgboost-cpu==" in requirements and "bentoml==1.4.40" in requirements
    assert "\nxgboost==" not in requirements and "nvidia-nccl" not in requirements, "no CUDA XGBoost in the image"
    bentoml.delete(tag)


# Run in a process of its own: it builds a BentoML app, and one process holds one (testkit/inprocess.py:
# BentoML's traffic metrics register in prometheus_client's one registry), whichever modules xdist
# put in this worker before it.
FRONT_CHECK = """
from serving import bentoml_internals
import asyncio

from service import XGBoostService

app = XGBoostService.to_asgi()
app.middleware_stack = app.build_middleware_stack()
traffic = bentoml_internals.traffic_metrics_middleware(app)
assert traffic is not None, "BentoML's request-metrics middleware is no longer in the app's chain"
bentoml_internals.TrafficMetrics(traffic)  # sets the middleware up, as its first request would
for name in ("metrics_request_total", "metrics_request_duration", "metrics_request_in_progress", "metrics_last_request_timestamp"):
    assert hasattr(traffic, name), f"BentoML's request-metrics middleware has no {name}"
inner = app.middleware_stack
seen = []

async def handler(scope, receive, send):
    seen.append(("front", scope["path"]))

bentoml_internals.serve_in_front(app, frozenset({"/predict"}), handler)
assert app.middleware_stack is not inner

async def call(path: str):
    # Starlette's __call__ is what uvicorn calls: it must now reach the handler first.
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    sent = []

    async def send(message):
        sent.append(message)

    await app({"type": "http", "path": path, "method": "GET", "headers": [], "query_string": b"", "root_path": ""}, receive, send)
    return sent

asyncio.run(call("/predict"))
assert seen == [("front", "/predict")]
assert asyncio.run(call("/no-such-route"))[0]["status"] == 404, "other paths must still reach BentoML's router"
assert seen == [("front", "/predict")]
"""


def test_prediction_routes_are_served_in_front_of_bentoml_middlewares(bentoml_home):
    done = subprocess.run([sys.executable, "-c", FRONT_CHECK], cwd=REPO, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]


def _uvicorn_exchange(app, request: bytes) -> tuple[list[bytes], bool]:
    """Run one HTTP/1.1 exchange through uvicorn's real httptools protocol; the transport's writes and whether it closed."""
    import asyncio

    from uvicorn.config import Config
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    from uvicorn.server import ServerState

    from testkit.transport import RecordingTransport

    async def exchange():
        config = Config(app=app, http="httptools", lifespan="off", log_config=None, proxy_headers=False)
        protocol = HttpToolsProtocol(config=config, server_state=ServerState(), app_state={})
        transport = RecordingTransport()
        protocol.connection_made(transport)
        protocol.data_received(request)
        for _ in range(20):
            await asyncio.sleep(0)
        closed = transport.closed
        protocol.connection_lost(None)
        return transport.writes, closed

    return asyncio.run(exchange())


@pytest.mark.fast
def test_a_response_leaves_uvicorn_in_one_write():
    assert __import__("uvicorn").__version__ == uvicorn_internals.UVICORN_VERSION, (
        "uvicorn changed version: re-check serving/uvicorn_internals.py, then update UVICORN_VERSION"
    )
    body = b'{"predicted_class": 4}'

    async def app(scope, receive, send):
        await receive()
        start = {"type": "http.response.start", "status": 200, "headers": [(b"content-length", str(len(body)).encode())]}
        await uvicorn_internals.send_response(send, start, {"type": "http.response.body", "body": body})

    writes, closed = _uvicorn_exchange(app, b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    assert len(writes) == 1, f"expected the status line, headers and body in one write, got {len(writes)}: {writes}"
    assert writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[0].endswith(b"\r\n\r\n" + body)
    assert not closed, "a keep-alive connection must stay open"

    writes, closed = _uvicorn_exchange(app, b"POST /predict HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 2\r\n\r\n{}")
    assert len(writes) == 1 and writes[0].endswith(body) and b"connection: close" in writes[0].lower()
    assert closed, "Connection: close must still close the connection, after the response is written"


def connections_per_worker(port: int) -> dict[int, int]:
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( sport = :{port} )"], capture_output=True, text=True, check=True).stdout
    counts: dict[int, int] = {}
    for pid in re.findall(r"pid=(\d+)", out):
        counts[int(pid)] = counts.get(int(pid), 0) + 1
    return counts


def test_each_worker_listens_on_its_own_socket_and_gets_an_even_share_of_connections(server_factory, tmp_path):
    server = server_factory(workers=2)
    port = int(server.url.rsplit(":", 1)[1])
    workers = set(worker_pids(server))
    # /readyz answers as soon as one worker is up: wait for the other to start listening too.
    try:
        wait_until(lambda: sorted(map(sorted, listeners(port))) == sorted([pid] for pid in workers), 60, "a socket per worker", 0.2)
    except NotReady:
        pytest.fail(f"expected one listening socket per worker {workers} and none shared, got {listeners(port)}")
    body = tmp_path / "record.json"
    body.write_text(json.dumps(EXAMPLE_RECORD))
    # 50 new keep-alive connections at once (as hey opens them). With the arbiter's shared socket
    # one worker often took 35-50 of them; spread by the kernel's reuseport hash, a split beyond
    # 12/38 has a probability of ~1e-4.
    load = subprocess.Popen(["hey", "-z", "3s", "-c", "50", "-q", "5", "-m", "POST", "-T", "application/json", "-D", str(body),
                             f"{server.url}/predict"], stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        time.sleep(1.5)
        split = connections_per_worker(port)
    finally:
        load.wait(timeout=60)
    # hey's 50 connections, or one more: Go's transport may dial a spare while a worker's connection
    # is on its way back to the idle pool, and that spare stays open, idle (one clean-clone run saw 51).
    assert set(split) == workers and 50 <= sum(split.values()) <= 52, split
    assert min(split.values()) >= 12, f"connections split {split} over the workers"


def test_the_shared_socket_stays_when_own_sockets_are_turned_off(server_factory):
    server = server_factory({"XGB_REUSEPORT": "0"}, workers=2)
    port = int(server.url.rsplit(":", 1)[1])
    (holders,) = listeners(port)
    assert set(worker_pids(server)) < holders, "both workers (and the arbiter) share the one listening socket"


def test_a_bentoml_whose_internals_moved_is_refused_readiness_naming_the_check(server_factory):
    server = server_factory(workers=1, wait=False, service=("tests.mismatched_bentoml_service:XGBoostService",))
    status, body = server.wait_ready(90, ready=lambda status: True)  # its first answer, whatever it is
    check = "no BentoML batch dispatcher found for API 'predict_rows'"
    assert status == 503 and check in json.loads(body)["error"], body
    predict = requests.post(f"{server.url}/predict", json=EXAMPLE_RECORD, timeout=10)
    assert predict.status_code == 503 and check in predict.json()["error"], "never a 500 per request"
    assert predict.headers["retry-after"] == "1"
    assert requests.get(f"{server.url}/livez", timeout=10).status_code == 200, "alive: not restarted in a loop"
    assert f"not ready: BentoML internals changed ({check}" in server.log()
