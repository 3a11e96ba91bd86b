"""Goal 6 of `make bench` (issue 17): what a candidate model costs /predict, in shadow and in canary mode.

The candidate is a copy of the served model under a new version, in a model store of the bench's
own (the served model's directory copied, the copy registered with save_bundle), so the user's
store is not touched and the candidate costs exactly what the primary costs: the overhead measured
is the rollout's, for a candidate as expensive as the primary. Three servers, /predict at 32
connections, interleaved rounds: no candidate, shadow, canary at 50 % (the most splitting).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable

from model_store.bundle import store_path

from .bench_servers import REPO, Server, interleaved, our_service

CONNECTIONS = 32
CANARY_PERCENT = 50
WARMUP_SECONDS = 3
_COPY = """
import sys, types
from model_store import load_bundle, save_bundle
b = load_bundle(sys.argv[1])
print(save_bundle(b.booster, types.SimpleNamespace(mean_=b.mean, scale_=b.scale), schema=b.schema,
                  labels={"candidate_copy_of": b.version}, metadata=b.metadata).tag)
"""


def candidate_store(workdir: Path, primary_tag: str) -> tuple[Path, str]:
    """A store holding the served model and a copy of it under a new version; returns (home, copy's tag)."""
    name, version = primary_tag.split(":", 1)
    source = Path(store_path()) / name / version
    home = workdir / "rollout-store"
    shutil.copytree(source, home / "models" / name / version)
    out = subprocess.run([sys.executable, "-c", _COPY, primary_tag], cwd=REPO, env={**os.environ, "BENTOML_HOME": str(home)},
                         capture_output=True, text=True, check=True)  # fmt: skip
    return home, out.stdout.strip().splitlines()[-1]


def servers(home: Path, primary_tag: str, candidate_tag: str) -> dict[str, Server]:
    common = {"BENTOML_HOME": str(home), "MODEL_TAG": primary_tag}
    pair = {**common, "XGB_CANDIDATE_TAG": candidate_tag}
    return {
        "without": our_service(env=common, name="without"),
        "shadow": our_service(env={**pair, "XGB_CANDIDATE_MODE": "shadow"}, name="shadow"),
        "canary": our_service(env={**pair, "XGB_CANDIDATE_MODE": "canary", "XGB_CANDIDATE_PERCENT": str(CANARY_PERCENT)}, name="canary"),
    }


def shadow_counts(server: Server) -> dict[str, float]:
    """Records the shadow server compared and skipped (its candidate fell behind), from /metrics."""
    with urllib.request.urlopen(f"{server.url}/metrics", timeout=10) as response:
        text = response.read().decode()
    return {name: sum(float(v) for v in re.findall(rf"^xgb_shadow_{name}_total(?:{{[^}}]*}})? (\S+)$", text, re.M))
            for name in ("records", "skipped")}  # fmt: skip


def measure(workdir: Path, primary_tag: str, bodies: Path, rounds: int, seconds: float,
            closed_loop: Callable[..., dict[str, Any]], log: Callable[[str], None]) -> dict[str, Any]:
    """/predict at 32 connections without a candidate, in shadow and in canary mode, interleaved."""
    home, candidate = candidate_store(workdir, primary_tag)
    log(f"goal 6: candidate {candidate} (a copy of {primary_tag}); /predict at {CONNECTIONS} connections, "
        f"{rounds} interleaved round(s) of {seconds:g} s: no candidate, shadow, canary {CANARY_PERCENT} %")
    group = servers(home, primary_tag, candidate)
    runs: dict[str, list] = {name: [] for name in group}
    try:
        for server in group.values():
            server.start()
            closed_loop(server, bodies, CONNECTIONS, WARMUP_SECONDS)  # warm-up, discarded
        before = shadow_counts(group["shadow"])
        for order in interleaved(group, rounds):
            for server in order:
                runs[server.name].append(closed_loop(server, bodies, CONNECTIONS, seconds))
        time.sleep(1)  # the last shadow backlog
        after = shadow_counts(group["shadow"])
        requests_sent = sum(x["requests"] for x in runs["shadow"])
    finally:
        for server in group.values():
            server.stop()
    return {"candidate": candidate, "connections": CONNECTIONS, "canary_percent": CANARY_PERCENT, **runs,
            "shadow_records": after["records"] - before["records"], "shadow_skipped": after["skipped"] - before["skipped"],
            "shadow_requests": requests_sent}
