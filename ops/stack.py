"""What ops operates on: names derived from the Pulumi stack config, and the `pulumi` commands.

The program names its resources `<project>-<environment>` (ml-api-prod): cluster, service, task
family, ECR repository, ALB and target group; the log group is `/ecs/<project>-<environment>`.
Reading `Pulumi.<stack>.yaml` gives those names (and the region) without the Pulumi CLI or a
backend login, so every verb but deploy/destroy works with AWS credentials alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ops.errors import OpsError
from ops.runner import Runner

REPO_ROOT = Path(__file__).resolve().parent.parent
INFRA_DIR = REPO_ROOT / "infra_pulumi"
PROJECT = "ml-api"  # the Pulumi project name (Pulumi.yaml), prefix of its config keys
# Same defaults as infra_pulumi/ml_api_infra/settings.py.
DEFAULTS = {"aws:region": "us-west-2", f"{PROJECT}:project": "ml-api", f"{PROJECT}:environment": "prod"}
CONTAINER_NAME = "api"


@dataclass(frozen=True)
class Stack:
    name: str
    region: str
    prefix: str
    infra_dir: Path = INFRA_DIR

    @property
    def cluster(self) -> str:
        return self.prefix

    @property
    def service(self) -> str:
        return self.prefix

    @property
    def repository(self) -> str:
        return self.prefix

    @property
    def load_balancer(self) -> str:
        return self.prefix[:32]

    @property
    def target_group(self) -> str:
        return self.prefix[:32]

    @property
    def log_group(self) -> str:
        return f"/ecs/{self.prefix}"

    @property
    def scaling_resource_id(self) -> str:
        return f"service/{self.cluster}/{self.service}"

    @property
    def registry_urn(self) -> str:
        # Targeting a component includes its children (the repository and its lifecycle policy).
        return f"urn:pulumi:{self.name}::{PROJECT}::{PROJECT}:registry:Registry::{self.prefix}"


def load_stack(name: str, infra_dir: Path = INFRA_DIR) -> Stack:
    config_file = infra_dir / f"Pulumi.{name}.yaml"
    if not config_file.exists():
        raise OpsError(f"no stack config {config_file}: create the stack with "
                       f"`pulumi stack init {name}` in {infra_dir} (or pass --stack)")
    config = {**DEFAULTS, **(yaml.safe_load(config_file.read_text()) or {}).get("config", {})}
    prefix = f"{config[f'{PROJECT}:project']}-{config[f'{PROJECT}:environment']}"
    return Stack(name=name, region=str(config["aws:region"]), prefix=prefix, infra_dir=infra_dir)


class Pulumi:
    """The `pulumi` commands ops runs, always against one stack, in the program's directory."""

    def __init__(self, stack: Stack, run: Runner) -> None:
        self.stack = stack
        self.run = run

    def _cmd(self, *args: str) -> list[str]:
        return ["pulumi", *args, "--stack", self.stack.name, "--cwd", str(self.stack.infra_dir),
                "--non-interactive"]

    def select(self, create: bool = False) -> None:
        args = ["stack", "select", self.stack.name, "--cwd", str(self.stack.infra_dir), "--non-interactive"]
        result = self.run(["pulumi", *args, *(["--create"] if create else [])], capture=True, check=False)
        if result.returncode != 0:
            raise OpsError(f"Pulumi stack '{self.stack.name}' not found (or not logged in to its backend): "
                           f"run `pulumi login`, then `python -m ops deploy` to create it")

    def up(self, *targets: str) -> None:
        extra = [arg for t in targets for arg in ("--target", t)]
        self.run(self._cmd("up", "--yes", "--skip-preview", *extra))

    def set_image_tag(self, tag: str) -> None:
        self.run(self._cmd("config", "set", f"{PROJECT}:imageTag", tag))

    def destroy(self) -> None:
        self.run(self._cmd("destroy", "--yes", "--skip-preview"))
