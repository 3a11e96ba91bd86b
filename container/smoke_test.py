"""Build the service image offline with `bentoml containerize`, run it, and check it from outside.

`make test-container` runs this once `make container-base` has put the local Debian base image
into buildah's storage. No registry is contacted: the image is built FROM that base with buildah
(pip still reaches PyPI for the pinned requirements), and run with podman.

  1. container/containerize.sh: `bentoml build`, then `bentoml containerize --backend buildah`;
  2. `podman run` as ECS Fargate runs the task definition (infra_pulumi's, under Pulumi mocks): its
     user (1034), a read-only root filesystem with no tmpfs anywhere, its environment unchanged,
     and at /tmp what Fargate mounts for the task's bind-mount volume: a directory owned by root
     with mode 0755, unless the image declares /tmp a VOLUME, whose ownership and mode it then
     gets (`fargate_tmp_volume`); the host port is forwarded to the container port;
  3. wait for /readyz, POST the served model's example record (from its GET /metadata) to /predict,
     compare with the model in-process, and run the task definition's container health-check
     command inside the container;
  4. read the uid of every process of the container from /proc;
  5. stop it with SIGTERM (as ECS does) and print the image size.

The last line printed is `RESULT {json}` (tests/test_container.py reads it). Exit status 1 when
a check fails, with the reason.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "infra_pulumi"))

from testkit.servers import free_port  # noqa: E402
from testkit.waiting import NotReady, http_ready  # noqa: E402
from model_store import load_bundle  # noqa: E402
from ml_api_infra.mocks import task_container  # noqa: E402
from serving import docs_page  # noqa: E402

CONTAINERIZE = REPO / "container" / "containerize.sh"
# The build log and the container's /tmp volume: where make keeps the container storage, outside the checkout (mk/container.mk)
LOG_DIR = Path(os.environ.get("XGB_CONTAINER_DIR") or f"/var/tmp/xgb-serving{REPO}/container")
SIZE_GOAL_MB = 600
READY_TIMEOUT_S = 180
# Answers are rounded to 6 decimals by the service.
PROBABILITY_TOLERANCE = 2e-6

# podman as root on this kind of host: crun 1.8 refuses a hybrid cgroup v1/v2 layout (runc does
# not), there is no systemd to manage cgroups, and podman's default rlimits (nofile 1048576) are
# above the host's hard limits, which a process without CAP_SYS_RESOURCE cannot raise.
PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager", "cgroupfs"]


def log(message: str) -> None:
    print(message, flush=True)


def podman(*args: str, check: bool = True) -> str:
    result = subprocess.run([*PODMAN, *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout.strip()


def build_image(base_image: str) -> tuple[str, float, str]:
    """containerize.sh with buildah FROM base_image; returns (image, seconds, log path)."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    log_path = LOG_DIR / "containerize.log"
    env = {**os.environ, "CONTAINER_BACKEND": "buildah", "BASE_IMAGE": base_image,
           "BENTOML": str(Path(sys.executable).parent / "bentoml")}
    started = time.monotonic()
    image = ""
    with log_path.open("w") as out:
        proc = subprocess.Popen([str(CONTAINERIZE)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        assert proc.stdout is not None
        for line in proc.stdout:
            out.write(line)
            # Progress: our own steps and buildah's STEP lines, not pip's output.
            if line.startswith(("==>", "IMAGE ")) or "STEP " in line:
                log("    " + line.rstrip()[:160])
            if line.startswith("IMAGE "):
                image = line.split()[1]
        returncode = proc.wait()
    seconds = time.monotonic() - started
    if returncode != 0 or not image:
        tail = log_path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"containerize.sh failed ({returncode}); log {log_path}:\n{tail}")
    return f"localhost/{image}", seconds, str(log_path)


def rlimit_options() -> list[str]:
    options = []
    for name, kind, cap in (("nofile", resource.RLIMIT_NOFILE, 16384), ("nproc", resource.RLIMIT_NPROC, 4096)):
        _, hard = resource.getrlimit(kind)
        value = cap if hard == resource.RLIM_INFINITY else min(hard, cap)
        options += ["--ulimit", f"{name}={value}:{value}"]
    return options


def descendants(pid: int) -> list[int]:
    """pid and all its descendants, from /proc."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def process_uids(pid: int) -> list[dict]:
    processes = []
    for p in descendants(pid):
        try:
            status = Path(f"/proc/{p}/status").read_text()
            cmdline = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
        except OSError:
            continue
        real, effective = (int(v) for v in re.search(r"^Uid:\s+(\d+)\s+(\d+)", status, re.M).groups())
        processes.append({"pid": p, "uid": real, "euid": effective, "cmd": cmdline[:120]})
    return processes


def wait_ready(name: str, url: str) -> float:
    def running() -> str | None:
        if podman("inspect", "--format", "{{.State.Running}}", name) == "true":
            return None
        return f"the container exited before it was ready:\n{podman('logs', name, check=False)[-3000:]}"

    started = time.monotonic()
    try:
        http_ready(f"{url}/readyz", READY_TIMEOUT_S, 0.5, alive=running)
    except NotReady as exc:
        raise RuntimeError(f"{exc}\n{podman('logs', name, check=False)[-3000:]}") from None
    return time.monotonic() - started


def fargate_tmp_volume(image_volumes: list[str], image_tmp: dict, directory: Path) -> dict:
    """What Fargate (platform 1.4+) mounts for a task bind-mount volume at /tmp: a fresh directory
    owned by root with mode 0755, unless the image declares /tmp a VOLUME, in which case it takes
    the ownership and mode the image gives /tmp."""
    directory.mkdir(parents=True)
    if "/tmp" in image_volumes:
        owner = {"uid": image_tmp["uid"], "gid": image_tmp["gid"], "mode": image_tmp["mode"]}
    else:
        owner = {"uid": 0, "gid": 0, "mode": 0o755}
    os.chown(directory, owner["uid"], owner["gid"])
    os.chmod(directory, owner["mode"])
    return owner


def run_and_check(image: str, image_volumes: list[str], image_tmp: dict, scratch: Path) -> dict:
    container = task_container()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    name = f"xgb-smoke-{os.getpid()}"
    [mount] = container["mountPoints"]
    tmp_owner = fargate_tmp_volume(image_volumes, image_tmp, scratch / "tmp-volume")
    container_port = container["portMappings"][0]["containerPort"]
    env = [arg for e in container["environment"] for arg in ("--env", f"{e['name']}={e['value']}")]
    log(f"==> podman run {image} as the task definition runs it: user {container['user']}, read-only root, "
        f"/tmp volume uid {tmp_owner['uid']} mode {tmp_owner['mode']:o}; port {port} -> {container_port}")
    assert container["readonlyRootFilesystem"] is True and mount["containerPath"] == "/tmp"
    podman("run", "--detach", "--name", name, "--publish", f"127.0.0.1:{port}:{container_port}",
           *rlimit_options(), "--user", container["user"], "--read-only", "--read-only-tmpfs=false",
           "--volume", f"{scratch / 'tmp-volume'}:/tmp", *env, image)
    try:
        ready_s = wait_ready(name, url)
        log(f"    ready in {ready_s:.1f} s")
        example = requests.get(f"{url}/metadata", timeout=10).json()["example"]  # the served model's own
        response = requests.post(f"{url}/predict", json=example, timeout=10)
        log(f"==> POST /predict -> {response.status_code} {response.text[:200]}")
        # ECS runs this command inside the container; a non-zero exit marks the task unhealthy.
        kind, command = container["healthCheck"]["command"]
        health = subprocess.run([*PODMAN, "exec", name, "sh", "-c", command], capture_output=True, text=True)
        log(f"==> health check ({kind}) inside the container: exit {health.returncode}")
        # The docs page's files come from a package whose unused parts the Dockerfile deletes.
        docs = {path: requests.get(f"{url}{path}", timeout=10).status_code for path in ("/", "/docs.json", *docs_page.ASSETS)}
        log(f"==> docs page: {docs}")
        pid = int(podman("inspect", "--format", "{{.State.Pid}}", name))
        processes = process_uids(pid)
        log("==> processes: " + ", ".join(f"pid {p['pid']} uid {p['uid']}" for p in processes))
        logs = podman("logs", name, check=False)
    finally:
        stop_started = time.monotonic()
        podman("stop", "--time", "30", name, check=False)
        stop_s = time.monotonic() - stop_started
        exit_code = podman("inspect", "--format", "{{.State.ExitCode}}", name, check=False)
        podman("rm", "--force", name, check=False)
    log(f"==> stopped in {stop_s:.1f} s, exit code {exit_code}")
    return {"port": port, "ready_seconds": round(ready_s, 1), "example": example, "status_code": response.status_code, "docs": docs,
            "response": response.json() if response.ok else response.text, "processes": processes,
            "health_check_exit": health.returncode, "tmp_volume": tmp_owner, "run_user": container["user"],
            "run_user_uid": processes[0]["uid"] if processes else None,
            "environment": {e["name"]: e["value"] for e in container["environment"]},
            "stop_seconds": round(stop_s, 1), "exit_code": int(exit_code) if exit_code.isdigit() else exit_code,
            "log_tail": logs[-2000:]}


# Run inside the image (as its user): what is installed, to check that only the runtime is there.
INVENTORY_SCRIPT = """
import json, os, platform, shutil, importlib.metadata as md
tmp = os.stat("/tmp")
print(json.dumps({"python": platform.python_version(),
                  "tmp": {"uid": tmp.st_uid, "gid": tmp.st_gid, "mode": tmp.st_mode & 0o7777},
                  "distributions": sorted({d.metadata["Name"].lower() for d in md.distributions()}),
                  "tools": {t: bool(shutil.which(t)) for t in ("gcc", "cc", "make", "git", "uv", "curl")}}))
"""


def inventory(image: str) -> dict:
    # --volume-less run: an image VOLUME gets an anonymous volume holding the image's own /tmp.
    out = podman("run", "--rm", "--network", "none", *rlimit_options(), "--entrypoint", "python", image,
                 "-c", INVENTORY_SCRIPT)
    return json.loads(out.splitlines()[-1])


def expected_prediction(example: dict) -> dict:
    """The same model, loaded in this process, on the same record."""
    bundle = load_bundle()
    rows = bundle.encode([example])
    if not bundle.schema.is_classification:
        return {"model_version": bundle.version, "prediction": float(bundle.predict(rows)[0])}
    proba = bundle.predict_proba(rows)[0]
    return {"model_version": bundle.version, "predicted_class": int(np.argmax(proba)),
            "probabilities": [float(p) for p in proba]}


def failures(result: dict) -> list[str]:
    problems = []
    if "Successfully built Bento container" not in Path(result["build_log"]).read_text(errors="replace"):
        problems.append("the build log has no `bentoml containerize` success line")
    answer, expected = result["response"], result["expected"]
    if result["status_code"] != 200 or not isinstance(answer, dict):
        problems.append(f"/predict answered {result['status_code']}: {answer}")
    else:
        if answer.get("model_version") != expected["model_version"]:
            problems.append(f"model {answer.get('model_version')} in the image, {expected['model_version']} in the store")
        if "prediction" in expected:
            if not np.isclose(answer.get("prediction", np.nan), expected["prediction"], rtol=1e-6):
                problems.append(f"prediction {answer.get('prediction')} differs from {expected['prediction']}")
        elif answer.get("predicted_class") != expected["predicted_class"]:
            problems.append(f"predicted class {answer.get('predicted_class')}, expected {expected['predicted_class']}")
        elif not np.allclose(answer.get("probabilities", []), expected["probabilities"], atol=PROBABILITY_TOLERANCE):
            problems.append(f"probabilities {answer.get('probabilities')} differ from {expected['probabilities']}")
    if result["health_check_exit"] != 0:
        problems.append(f"the task definition's health-check command failed (exit {result['health_check_exit']})")
    if missing := [path for path, status in result["docs"].items() if status != 200]:
        problems.append(f"docs page files missing in the image: {missing}")
    if not result["processes"] or any(p["uid"] == 0 or p["euid"] == 0 for p in result["processes"]):
        problems.append(f"a process runs as root (or none was found): {result['processes']}")
    if not result["inventory"]["python"].startswith("3.11."):
        problems.append(f"Python {result['inventory']['python']} in the image, expected 3.11")
    if build_tools := [t for t, present in result["inventory"]["tools"].items() if present]:
        problems.append(f"tools the runtime does not use are in the image: {build_tools}")
    if result["size_mb"] > SIZE_GOAL_MB:
        problems.append(f"image is {result['size_mb']} MB, goal <= {SIZE_GOAL_MB} MB")
    return problems


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-image", required=True, help="local base image in buildah's storage")
    args = parser.parse_args()

    image, build_s, build_log = build_image(args.base_image)
    inspect = json.loads(podman("image", "inspect", image))[0]
    size = int(inspect["Size"])
    volumes = sorted(inspect["Config"].get("Volumes") or {})
    found = inventory(image)
    scratch = Path(tempfile.mkdtemp(prefix="smoke-", dir=LOG_DIR))
    try:
        ran = run_and_check(image, volumes, found["tmp"], scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    result = {"image": image, "build_seconds": round(build_s, 1), "build_log": build_log,
              "size_bytes": size, "size_mb": round(size / 1e6, 1), "volumes": volumes,
              "user": inspect["Config"].get("User"), "entrypoint": inspect["Config"].get("Entrypoint"),
              "inventory": found, **ran, "expected": expected_prediction(ran["example"])}
    problems = failures(result)
    log(f"==> image {image}: {result['size_mb']} MB (goal <= {SIZE_GOAL_MB} MB), built in {result['build_seconds']} s")
    for problem in problems:
        log(f"FAIL: {problem}")
    if not problems:
        log("==> OK: built by bentoml containerize, /predict matches the model in-process, no process runs as root")
    log("RESULT " + json.dumps({**result, "failures": problems}))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
