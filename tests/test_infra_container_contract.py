"""The task definition's promises, checked on a real `bentoml serve` run the way Fargate runs it.

The program declares a read-only root filesystem with one writable volume at /tmp, a read-only
model store, the environment the service reads, a `/livez` container health check and a stop
timeout. Here a private mount namespace gives the server exactly that (`/` remounted read-only,
a tmpfs on /tmp, the model store bind-mounted read-only), with the environment taken from the
program's container definition. Runs as root: the Python here lives under /root (mode 700), so
the image's uid 1034 can't be emulated; the read-only mounts stop root's writes all the same.
What uid 1034 meets on Fargate (a /tmp volume owned as the image declares it) is checked on the
real image in tests/test_container.py (`make test-container`).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from testkit.servers import free_port, read_only_root
from testkit.waiting import NotReady, http_ready
REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "infra_pulumi"))

from ml_api_infra.mocks import task_container  # noqa: E402
from model_store.dataset import EXAMPLE_RECORD  # noqa: E402

BENTOML = str(Path(sys.executable).parent / "bentoml")
MODEL_STORE_MOUNT = "/mnt"  # where the namespace shows the store, read-only (the image's BENTOML_HOME)


@pytest.fixture(scope="module")
def container() -> dict:
    return task_container()


@pytest.fixture(scope="module")
def fargate_like_server(container, bentoml_home, tmp_path_factory):
    port = free_port()
    env = {e["name"]: e["value"] for e in container["environment"]}
    [tmp_mount] = [m["containerPath"] for m in container["mountPoints"]]
    assert container["readonlyRootFilesystem"] is True
    command = ["env", *(f"{k}={v}" for k, v in env.items()), f"BENTOML_HOME={MODEL_STORE_MOUNT}",
               BENTOML, "serve", "service:XGBoostService", "--host", "127.0.0.1", "--port", str(port)]
    # / read-only, the task's /tmp volume writable, the store shown read-only at MODEL_STORE_MOUNT.
    wrapped = read_only_root(command, cwd=REPO, writable=[tmp_mount], binds={bentoml_home: MODEL_STORE_MOUNT})
    log = tmp_path_factory.mktemp("fargate-like") / "serve.log"
    proc = subprocess.Popen(wrapped, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        http_ready(f"{url}/readyz", 90, 0.2, alive=lambda: None if proc.poll() is None else f"server exited with {proc.returncode}")
    except NotReady as exc:
        pytest.fail(f"{exc} on a read-only root:\n{log.read_text()[-3000:]}")
    yield {"url": url, "port": port, "proc": proc, "log": log}
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def test_serves_predictions_with_a_read_only_root(fargate_like_server):
    url = fargate_like_server["url"]
    response = requests.post(f"{url}/predict", json=EXAMPLE_RECORD, timeout=10)
    assert response.status_code == 200, response.text
    assert response.json()["features_used"] == 36
    # Prometheus multiprocess files must land somewhere writable (the /tmp volume).
    metrics = requests.get(f"{url}/metrics", timeout=10).text
    assert "xgb_predictions_total" in metrics


def test_container_health_check_command_passes(container, fargate_like_server):
    kind, command = container["healthCheck"]["command"]
    assert kind == "CMD-SHELL"
    # Same command, pointed at this server's port instead of the container's 3000.
    local = command.replace(":3000/", f":{fargate_like_server['port']}/")
    assert local != command
    assert subprocess.run(["sh", "-c", local], timeout=30).returncode == 0
    broken = command.replace(":3000/", f":{free_port()}/")
    assert subprocess.run(["sh", "-c", broken], timeout=30, capture_output=True).returncode != 0


def test_stops_on_sigterm_within_the_stop_timeout(container, fargate_like_server):
    proc = fargate_like_server["proc"]
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    exit_code = proc.wait(container["stopTimeout"])
    assert time.monotonic() - started < container["stopTimeout"]
    assert exit_code == 0, f"a SIGTERM stop must be clean (ECS records the exit code):\n{fargate_like_server['log'].read_text()[-3000:]}"
