"""The service image: built and pushed by `pulumi up` itself, unless the stack pins `imageTag`.

The image is the repository's own build (`bentoml build` + `bentoml containerize` with
container/Dockerfile.template, the same as `make image`), which a Docker-build resource cannot
run: containerize generates the Dockerfile and assembles the build context (models included) in a
temporary directory. So a local command runs `python -m ops push` in the repository root, once
the ECR repository exists; it prints the pushed image as its last line (`__image__:<uri>:<tag>`),
which the task definition uses. The command runs again when the inputs of the build change (the
service's sources, the serving lock file, the Dockerfile template, the model version in the store):
`triggers` holds their fingerprint. `pulumi preview` does not run it (the image shows as unknown).
"""

from __future__ import annotations

import hashlib
import os
import re
import shlex
from pathlib import Path

import pulumi
import pulumi_command as command

from .settings import StackSettings

REPO_ROOT = Path(__file__).resolve().parent.parent.parent
IMAGE_LINE = re.compile(r"^__image__:(\S+)$", re.M)
# What the image is built from (bentofile.yaml includes the first five).
BUILD_INPUTS = ("service.py", "bentofile.yaml", "serving/*.py", "model_store/*.py",
                "requirements-serve.lock", "container/Dockerfile.template", "container/containerize.sh")
MODEL_NAME = "xgb_classifier"


def model_version(bentoml_home: Path) -> str:
    """The version `xgb_classifier:latest` names in the store (BentoML keeps it in a `latest` file)."""
    latest = bentoml_home / "models" / MODEL_NAME / "latest"
    return latest.read_text().strip() if latest.exists() else "no-model"


def build_fingerprint(root: Path = REPO_ROOT, bentoml_home: Path | None = None) -> str:
    """sha256 over the build inputs' paths and contents, and the model version."""
    # The store `ops push` builds from (ops.image.bentoml_env): $BENTOML_HOME, else BentoML's ~/bentoml.
    home = bentoml_home or Path(os.environ.get("BENTOML_HOME") or os.path.expanduser("~/bentoml"))
    digest = hashlib.sha256()
    for pattern in BUILD_INPUTS:
        for path in sorted(root.glob(pattern)):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    digest.update(model_version(home).encode())
    return digest.hexdigest()


def pushed_image(stdout: str) -> str:
    found = IMAGE_LINE.findall(stdout or "")
    if not found:
        raise ValueError(f"`python -m ops push` printed no __image__ line: {(stdout or '')[-500:]}")
    return found[-1]


def push_command(settings: StackSettings, stack: str, repository_url: str) -> str:
    # Relative paths (the command runs in the repository root): the same on every machine, so a
    # checkout elsewhere does not look like a change to the command.
    return shlex.join([".venv/bin/python", "-m", "ops", "--stack", stack, "--region", settings.region,
                       "push", "--repository-url", repository_url])


def push_environment() -> dict[str, str]:
    """AWS_PROFILE for `ops push`: the stack's `aws:profile` (what the AWS provider deploys with)."""
    profile = pulumi.Config("aws").get("profile")
    return {"AWS_PROFILE": profile} if profile else {}


class ServiceImage(pulumi.ComponentResource):
    def __init__(self, name: str, settings: StackSettings, *, repository_url: pulumi.Output[str],
                 repository: pulumi.Resource, opts: pulumi.ResourceOptions | None = None):
        super().__init__("ml-api:image:ServiceImage", name, None, opts)
        if settings.image_tag:
            self.image_url = pulumi.Output.concat(repository_url, ":", settings.image_tag)
            self.build = None
        else:
            stack = pulumi.get_stack()
            self.build = command.local.Command(
                f"{name}-build-push",
                create=repository_url.apply(lambda url: push_command(settings, stack, url)),
                # The push uses the same credentials as the provider that deploys the stack.
                environment=push_environment(),
                # Relative to infra_pulumi/, where Pulumi runs the program and its providers.
                dir="..",
                triggers=[build_fingerprint()],
                opts=pulumi.ResourceOptions(parent=self, depends_on=[repository]))
            self.image_url = self.build.stdout.apply(pushed_image)
        self.register_outputs({"imageUrl": self.image_url})
