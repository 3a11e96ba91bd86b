"""Build the Bento, containerize it and push it to ECR, tagged with the Bento version.

ECR tags are immutable, and a Bento version names exactly one build, so a tag that is already in
the repository is not pushed again. The image is built by the repository's
`container/containerize.sh` (the same build as `make image`), then re-tagged for ECR.
`python -m ops push` is what `pulumi up` runs (infra_pulumi/ml_api_infra/image.py): progress on
stderr, and on stdout only `__image__:<repository>:<tag>`, which the program reads.
"""

from __future__ import annotations

import base64
import os
import re
import sys
from pathlib import Path
from typing import Callable
from urllib.parse import urlparse

import botocore.exceptions

from ops.aws import Aws, error_code
from ops.errors import OpsError
from ops.runner import Runner
from ops.stack import MODEL_SETTINGS, REPO_ROOT, Stack

TAG_LINE = re.compile(r"__tag__:(\S+:\S+)")
IMAGE_LINE_PREFIX = "__image__:"
CONTAINERIZE = "container/containerize.sh"
# The task definition runs X86_64; without this an ARM laptop would push an image Fargate can't start.
PLATFORM = "linux/amd64"


def bentoml_executable() -> str:
    """The bentoml next to this Python (the repo's .venv) even when the venv is not activated."""
    beside = Path(sys.executable).parent / "bentoml"
    return str(beside) if beside.exists() else "bentoml"


def bentoml_env() -> dict[str, str]:
    # BentoML's own store (~/bentoml) unless the caller chose another, as `make train` does.
    return {"BENTOML_HOME": os.environ.get("BENTOML_HOME") or os.path.expanduser("~/bentoml")}


def build_bento(run: Runner, stack: Stack) -> str:
    """`bentoml build` in the repository root; returns the Bento tag `name:version`.

    With the stack's modelTag and candidateTag in the environment, as the task will have them: the
    service packs the models it would serve, so the image holds the candidate too, and `ops promote`
    and `ops rollback` switch between them without a new image."""
    models = {MODEL_SETTINGS[key]: value for key, value in stack.model_settings if key in ("modelTag", "candidateTag")}
    result = run([bentoml_executable(), "build", "--output", "tag"], cwd=REPO_ROOT, capture=True,
                 env={**bentoml_env(), **models})
    match = TAG_LINE.search(result.stdout)
    if not match:
        raise OpsError(f"`bentoml build` printed no __tag__ line: {result.stdout.strip()[-500:]}")
    return match.group(1)


def repository_uri(aws: Aws, stack: Stack) -> str | None:
    try:
        repos = aws.client("ecr").describe_repositories(repositoryNames=[stack.repository])
    except botocore.exceptions.ClientError as err:
        if error_code(err) == "RepositoryNotFoundException":
            return None
        raise
    return repos["repositories"][0]["repositoryUri"]


def image_exists(aws: Aws, stack: Stack, tag: str) -> bool:
    try:
        aws.client("ecr").describe_images(repositoryName=stack.repository, imageIds=[{"imageTag": tag}])
    except botocore.exceptions.ClientError as err:
        if error_code(err) in ("ImageNotFoundException", "RepositoryNotFoundException"):
            return False
        raise
    return True


def docker_login(aws: Aws, run: Runner) -> None:
    """`docker login` to ECR with a 12-hour token; the password goes through stdin, not argv."""
    auth = aws.client("ecr").get_authorization_token()["authorizationData"][0]
    user, password = base64.b64decode(auth["authorizationToken"]).decode().split(":", 1)
    registry = urlparse(auth["proxyEndpoint"]).netloc or auth["proxyEndpoint"]
    run(["docker", "login", "--username", user, "--password-stdin", registry],
        stdin=password, capture=True, secret_stdin=True)


def build_and_push(aws: Aws, stack: Stack, run: Runner, repo_uri: str,
                   echo: Callable[[str], None]) -> str:
    """Returns the image tag now in ECR (the Bento version)."""
    echo("==> building the Bento")
    bento = build_bento(run, stack)
    tag = bento.split(":", 1)[1]
    image = f"{repo_uri}:{tag}"
    if image_exists(aws, stack, tag):
        echo(f"==> {image} is already in ECR (tags are immutable): not pushing again")
        return tag
    echo(f"==> containerizing {bento}")
    run([CONTAINERIZE], cwd=REPO_ROOT,
        env={**bentoml_env(), "BENTO_TAG": bento, "CONTAINER_BACKEND": "docker",
             "BENTOML": bentoml_executable(), "DOCKER_DEFAULT_PLATFORM": PLATFORM})
    run(["docker", "tag", bento, image])
    echo("==> logging in to ECR")
    docker_login(aws, run)
    echo(f"==> pushing {image}")
    run(["docker", "push", image])
    return tag


def push(aws: Aws, stack: Stack, run: Runner, echo: Callable[[str], None],
         repository_url: str | None = None) -> str:
    """Build and push to the stack's repository (or `repository_url`); returns `<uri>:<tag>`."""
    repo_uri = repository_url or repository_uri(aws, stack)
    if repo_uri is None:
        raise OpsError(f"ECR repository {stack.repository} not found in {stack.region}: "
                       f"`pulumi up` creates it (run `python -m ops deploy`)")
    return f"{repo_uri}:{build_and_push(aws, stack, run, repo_uri, echo)}"
