"""The service image, built and run for real: `make test-container` (container/smoke_test.py).

It builds the image with `bentoml containerize` (buildah, FROM a local debootstrap base, no registry),
runs it with podman under its own entrypoint and user, and reports what it saw on its last line
(`RESULT {json}`). These tests check that report against the model store of this test session.
Takes 35-80 s for the image build, plus 50-80 s of debootstrap the first time on a machine (its
root filesystem is then cached in /var/tmp/xgb-serving/debootstrap for every checkout).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from model_store import load_bundle
from model_store.dataset import EXAMPLE_RECORD, FEATURE_NAMES, N_FEATURES

REPO = Path(__file__).resolve().parent.parent
SIZE_GOAL_MB = 600
BENTOML_ENTRYPOINT = "/home/bentoml/bento/env/docker/entrypoint.sh"

pytestmark = pytest.mark.timeout(1500)


@pytest.fixture(scope="module")
def smoke(bentoml_home) -> dict:
    """Runs `make test-container` once against this session's model store; returns its report."""
    proc = subprocess.Popen(["make", "--no-print-directory", "test-container"], cwd=REPO,
                            env={**os.environ, "BENTOML_HOME": bentoml_home},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    output = []
    for line in proc.stdout:  # progress, live with `pytest -s`, else shown when a test fails
        sys.stdout.write(line)
        sys.stdout.flush()
        output.append(line)
    returncode = proc.wait()
    text = "".join(output)
    results = [line for line in output if line.startswith("RESULT ")]
    assert results, f"make test-container printed no RESULT line (exit {returncode}):\n{text[-4000:]}"
    return {**json.loads(results[-1][len("RESULT "):]), "returncode": returncode, "output": text}


def test_make_target_passes(smoke):
    assert smoke["failures"] == [] and smoke["returncode"] == 0, smoke["output"][-4000:]


def test_image_was_built_by_bentoml_containerize_from_this_store(smoke):
    import bentoml

    build_log = Path(smoke["build_log"]).read_text(errors="replace")
    bento_tag = smoke["image"].removeprefix("localhost/")
    assert "bentoml containerize --backend buildah" in build_log
    assert f'Successfully built Bento container for "{bento_tag}"' in build_log
    # Tagged with the version of a Bento that `bentoml build` put into this session's store.
    assert str(bentoml.bentos.get(bento_tag).tag) == bento_tag
    assert smoke["entrypoint"] == [BENTOML_ENTRYPOINT]


def test_predict_inside_the_container_matches_the_model_in_process(smoke):
    assert smoke["status_code"] == 200, smoke["response"]
    answer = smoke["response"]
    assert smoke["example"] == EXAMPLE_RECORD, "the smoke test posts the served model's example (the default model's: the seed's)"
    bundle = load_bundle()
    proba = bundle.predict_proba(np.array([[EXAMPLE_RECORD[f] for f in FEATURE_NAMES]], dtype=np.float64))[0]
    assert answer["model_version"] == bundle.version
    assert answer["predicted_class"] == int(np.argmax(proba))
    assert answer["probabilities"] == pytest.approx(proba.tolist(), abs=2e-6)
    assert answer["confidence"] == pytest.approx(float(proba.max()), abs=2e-6)
    assert answer["features_used"] == N_FEATURES


def test_runs_as_fargate_runs_the_task_definition(smoke):
    """Fargate mounts the task's /tmp volume root-owned 0755 unless the image declares /tmp a VOLUME
    (then with the image's ownership); the container runs as uid 1034 on a read-only root with the
    task definition's environment. The image must declare /tmp, or `bentoml serve` cannot start."""
    import sys

    sys.path.insert(0, str(REPO / "infra_pulumi"))
    from ml_api_infra.mocks import task_container

    container = task_container()
    assert smoke["volumes"] == ["/tmp"], "the image must declare /tmp a VOLUME"
    assert smoke["tmp_volume"]["uid"] == smoke["run_user_uid"] == 1034, smoke["tmp_volume"]
    assert smoke["run_user"] == container["user"]
    assert smoke["environment"] == {e["name"]: e["value"] for e in container["environment"]}
    assert smoke["environment"]["BENTOML_HOME"].startswith("/tmp/")
    assert smoke["status_code"] == 200 and smoke["health_check_exit"] == 0, smoke["log_tail"]


def test_the_service_does_not_run_as_root(smoke):
    assert smoke["user"] == "bentoml"
    processes = smoke["processes"]
    # The server (the entrypoint exec's `bentoml serve`) and its worker.
    assert len(processes) >= 2, processes
    assert any("bentoml" in p["cmd"] or "_bentoml_impl" in p["cmd"] for p in processes), processes
    assert all(p["uid"] != 0 and p["euid"] != 0 for p in processes), processes


def test_image_size_is_printed_and_within_the_goal(smoke):
    printed = re.search(r"==> image \S+: ([\d.]+) MB", smoke["output"])
    assert printed, "no image size line in the output"
    assert float(printed.group(1)) == smoke["size_mb"] == round(smoke["size_bytes"] / 1e6, 1)
    assert smoke["size_mb"] <= SIZE_GOAL_MB


def test_bento_packs_only_the_service_code_with_the_store_inside_the_repository(bentoml_home, tmp_path):
    """With the store inside the repository (BENTOML_HOME=.bentoml): `bentoml build` walks the whole
    repository, so an unanchored include pattern would also pick up copies in the store's tmp/.

    In a copy of the checkout's tracked files: the store's files come and go while it builds, and
    another test's `bentoml build` walking this checkout at that moment would fail."""
    checkout = tmp_path / "checkout"
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, tracked):
        if (REPO / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, checkout / name)
    home = checkout / ".bentoml"
    home.mkdir()
    (home / "models").symlink_to(Path(bentoml_home) / "models")
    env = {**os.environ, "BENTOML_HOME": str(home)}
    out = subprocess.run([str(Path(sys.executable).parent / "bentoml"), "build", "-o", "tag"], cwd=checkout,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    name, version = re.search(r"__tag__:(\S+):(\S+)", out.stdout).groups()
    src = home / "bentos" / name / version / "src"
    packed = sorted(str(p.relative_to(src)) for p in src.rglob("*") if p.is_file())
    expected = sorted(["service.py", "bentofile.yaml"]
                      + [str(p.relative_to(REPO)) for d in ("serving", "model_store") for p in (REPO / d).glob("*.py")])
    assert packed == expected


def test_container_stops_cleanly_on_sigterm(smoke):
    # ECS stops tasks with SIGTERM; the server must drain and exit 0 well before SIGKILL.
    assert smoke["exit_code"] == 0, smoke["log_tail"]
    assert smoke["stop_seconds"] < 30


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_image_holds_python_311_and_only_the_pinned_serving_packages(smoke):
    inventory = smoke["inventory"]
    assert inventory["python"].startswith("3.11."), inventory["python"]
    lock = (REPO / "requirements-serve.lock").read_text()
    pinned = {normalized(m) for m in re.findall(r"^([A-Za-z0-9_.-]+)==", lock, re.M)}
    installed = {normalized(d) for d in inventory["distributions"]}
    assert installed == pinned, {"not pinned": installed - pinned, "missing": pinned - installed}
    assert "xgboost-cpu" in installed and "xgboost" not in installed and "scikit-learn" not in installed
    # No compilers, git or the installer left behind.
    assert not any(inventory["tools"].values()), inventory["tools"]


def test_the_docs_page_and_its_files_are_served_from_the_image(smoke):
    # The Dockerfile deletes the parts of swagger-ui-py the page does not use.
    assert smoke["docs"] and set(smoke["docs"].values()) == {200}, smoke["docs"]
