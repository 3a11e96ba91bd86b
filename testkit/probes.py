"""What tests (and tools) ask of a running service: its /metrics, its worker processes and sockets,
requests sent meanwhile, a fuzz run; and the default model trained through the real CLI."""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from testkit.servers import REPO


def train_default_model(*extra_args: str) -> str:
    """Train via the real CLI into the test store; returns its output."""
    out = subprocess.run(
        [sys.executable, "train_export.py", *extra_args], cwd=REPO, capture_output=True, text=True, check=True
    )
    return out.stdout


def samples(url: str) -> dict[str, list]:
    """A service's /metrics as {sample name: [(labels, value), ...]}."""
    from prometheus_client.parser import text_string_to_metric_families

    found: dict[str, list] = {}
    for family in text_string_to_metric_families(requests.get(f"{url}/metrics", timeout=10).text):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


def total(found: dict[str, list], name: str, **labels: str) -> float:
    """The sum of a sample over the series (workers, label values) that carry `labels`."""
    return sum(v for got, v in found.get(name, []) if labels.items() <= got.items())


def exposed(url: str, series: str) -> float:
    """The value of one series (name and labels as /metrics writes them) in a service's /metrics; 0 before it exists."""
    lines = [l for l in requests.get(f"{url}/metrics", timeout=10).text.splitlines() if l.startswith(series + " ")]
    return float(lines[0].split()[-1]) if lines else 0.0


@contextlib.contextmanager
def meanwhile(send: Callable[[requests.Session], requests.Response], pause: float = 0.0) -> Iterator[list[tuple[int, float]]]:
    """Sends a request over and over from a thread of its own (`pause` s apart) while the block runs.

    Yields the (status, seconds) of each answer so far; the block's end stops the thread, and an
    error it met (a timeout, a refused connection) is raised there.
    """
    answers: list[tuple[int, float]] = []
    stop = threading.Event()

    def loop() -> None:
        with requests.Session() as session:
            while not stop.is_set():
                started = time.monotonic()
                status = send(session).status_code
                answers.append((status, time.monotonic() - started))
                stop.wait(pause)

    with ThreadPoolExecutor(1) as thread:
        looping = thread.submit(loop)
        try:
            yield answers
        finally:
            stop.set()
        looping.result()


def fuzz(url: str, report_dir: Path, max_examples: int) -> None:
    """schemathesis against the service's own OpenAPI document: no 5xx, every answer as documented."""
    result = subprocess.run(
        [str(REPO / ".venv/bin/schemathesis"), "run", f"{url}/docs.json", "--checks", "all",
         "--max-examples", str(max_examples), "--seed", "7", "--report-dir", str(report_dir),
         # Longer than the service's own XGB_REQUEST_TIMEOUT_S (30 s): a slow answer (a 1,000-record
         # /explain_batch on a loaded machine took 8-10 s) is a 200 or a documented 504, not a client timeout.
         "--request-timeout", "45"],
        capture_output=True, text=True, timeout=600, env={**os.environ, "NO_COLOR": "1"},
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-4000:]
    assert re.search(r"\d+ generated, \d+ passed", result.stdout), result.stdout[-2000:]


class LiveClient(requests.Session):
    """A requests Session for one server whose URLs are paths ("/predict"), like the in-process
    app_client's: a test written against one runs against the other."""

    def __init__(self, base_url: str) -> None:
        super().__init__()
        self.base_url = base_url.rstrip("/")

    def request(self, method: str, url: str, *args, **kwargs) -> requests.Response:
        return super().request(method, self.base_url + url if url.startswith("/") else url, *args, **kwargs)


def without_request_ids(answer: dict) -> dict:
    """A batch answer ({"predictions"|"explanations": [...]}) with each record's `request_id` checked
    (<the request's id>-<its index>) and taken out: what is left compares with another request's
    answer, or with an in-process call's, which has no request."""
    from serving.request_ids import record_id

    key = "predictions" if "predictions" in answer else "explanations"
    records = [dict(record) for record in answer[key]]
    request_id = records[0]["request_id"].rpartition("-")[0] if records else ""
    for index, record in enumerate(records):
        assert record.pop("request_id") == record_id(request_id, index), f"one request, one id, records in order: {answer[key][index]}"
    return {**answer, key: records}


def read_response(sock) -> bytes:
    """One whole HTTP/1.1 response from a raw socket, head and Content-Length body (b"" if the server
    closed the connection first). The body may come in a segment of its own: a test that reads
    once can find it missing, or opening the next response."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return b""
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    while length and len(body) < int(length.group(1)):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    assert not length or len(body) == int(length.group(1)), f"one response, nothing after it: {data + body!r}"
    return head + b"\r\n\r\n" + body
