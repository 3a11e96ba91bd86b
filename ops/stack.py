"""What ops operates on: names derived from the Pulumi stack config, and the `pulumi` commands.

The program names its resources `<project>-<environment>` (ml-api-prod): cluster, service, task
family, ECR repository, ALB and target group; the log group is `/ecs/<project>-<environment>`.
Reading `Pulumi.<stack>.yaml` gives those names (and the region, and the domain) without the
Pulumi CLI or a backend login, so every verb but deploy/destroy works with AWS credentials alone.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from ops.errors import OpsError
from ops.runner import Runner

REPO_ROOT = Path(__file__).resolve().parent.parent
INFRA_DIR = REPO_ROOT / "infra_pulumi"
PROJECT = "ml-api"  # the Pulumi project name (Pulumi.yaml), prefix of its config keys
# Same defaults as infra_pulumi/ml_api_infra/settings.py.
DEFAULTS = {f"{PROJECT}:project": "ml-api", f"{PROJECT}:environment": "prod"}
DEFAULT_REGION = "us-west-2"
CONTAINER_NAME = "api"
# Stack config key -> the task environment variable the program makes of it (ml_api_infra/service.py).
MODEL_SETTINGS = {"modelTag": "MODEL_TAG", "candidateTag": "XGB_CANDIDATE_TAG", "candidateMode": "XGB_CANDIDATE_MODE",
                  "candidatePercent": "XGB_CANDIDATE_PERCENT", "shadowMinAgreement": "XGB_SHADOW_MIN_AGREEMENT",
                  "modelUri": "MODEL_URI", "candidateUri": "CANDIDATE_MODEL_URI"}


def default_region() -> str:
    """The region Pulumi's AWS provider uses when the stack sets no `aws:region` (the program's
    settings.default_region follows the same rule)."""
    return os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION


def urn_selected(urn: str, patterns: list[str]) -> bool:
    """Pulumi's `--target`/`--exclude` rule: a pattern names one exact URN, unless it has wildcards
    (`*` within a URN segment, `**` across segments). A component's children have URNs of their own
    (`...::ml-api:registry:Registry$aws:ecr/repository:Repository::ml-api-prod-repo`), so naming the
    component does not select them; `<type prefix>**` does."""
    return any(re.fullmatch("".join(".*" if part == "**" else "[^:]*" if part == "*" else re.escape(part)
                                    for part in re.split(r"(\*\*|\*)", pattern)), urn)
               for pattern in patterns)


@dataclass(frozen=True)
class Stack:
    name: str
    region: str
    prefix: str
    infra_dir: Path = INFRA_DIR
    domain_name: str = ""
    image_tag: str = ""  # pinned in the stack config; empty: `pulumi up` builds the image
    model_bucket: str = ""  # ml-api:modelBucket; empty: `<prefix>-models-<account id>`
    # The stack config's model keys (MODEL_SETTINGS) that are set, with their values.
    model_settings: tuple[tuple[str, str], ...] = ()

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
    def registry_urns(self) -> str:
        """The Registry component and its children (the repository, its lifecycle policy)."""
        return f"urn:pulumi:{self.name}::{PROJECT}::{PROJECT}:registry:Registry**"


def load_stack(name: str, infra_dir: Path = INFRA_DIR) -> Stack:
    config_file = infra_dir / f"Pulumi.{name}.yaml"
    if not config_file.exists():
        raise OpsError(f"no stack config {config_file}: create the stack with "
                       f"`pulumi stack init {name}` in {infra_dir} (or pass --stack)")
    config = {**DEFAULTS, **(yaml.safe_load(config_file.read_text()) or {}).get("config", {})}
    prefix = f"{config[f'{PROJECT}:project']}-{config[f'{PROJECT}:environment']}"
    return Stack(name=name, region=str(config.get("aws:region") or default_region()), prefix=prefix,
                 infra_dir=infra_dir, domain_name=str(config.get(f"{PROJECT}:domainName", "")),
                 image_tag=str(config.get(f"{PROJECT}:imageTag", "")),
                 model_bucket=str(config.get(f"{PROJECT}:modelBucket", "")),
                 model_settings=tuple((key, str(config[f"{PROJECT}:{key}"])) for key in MODEL_SETTINGS
                                      if f"{PROJECT}:{key}" in config))


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

    def preview(self) -> None:
        """Show what `up` would change (streamed to the terminal)."""
        self.run(self._cmd("preview", "--diff"))

    def up(self) -> None:
        self.run(self._cmd("up", "--yes", "--skip-preview"))

    def output(self, name: str) -> str:
        """One stack output (`pulumi stack output NAME`), "" when the stack has none by that name."""
        result = self.run(["pulumi", "stack", "output", name, "--stack", self.stack.name,
                           "--cwd", str(self.stack.infra_dir), "--non-interactive"], capture=True, check=False)
        return result.stdout.strip() if result.returncode == 0 else ""

    def set_image_tag(self, tag: str) -> None:
        self.run(self._cmd("config", "set", f"{PROJECT}:imageTag", tag))

    def unpin_image_tag(self) -> None:
        self.run(self._cmd("config", "rm", f"{PROJECT}:imageTag"))

    def record_model_settings(self, environment: dict[str, str]) -> list[str]:
        """Make the stack config's model keys say what `environment` (a task's) runs, so the next
        `pulumi up` keeps it: set what differs, remove what the task does not have. Returns the keys changed."""
        current = dict(self.stack.model_settings)
        changed = []
        for key, variable in MODEL_SETTINGS.items():
            value = environment.get(variable)
            if value is not None and current.get(key) != value:
                self.run(self._cmd("config", "set", f"{PROJECT}:{key}", value))
                changed.append(key)
            elif value is None and key in current:
                self.run(self._cmd("config", "rm", f"{PROJECT}:{key}"))
                changed.append(key)
        return changed

    def destroy(self, *exclude: str) -> None:
        extra = [arg for pattern in exclude for arg in ("--exclude", pattern)]
        self.run(self._cmd("destroy", "--yes", "--skip-preview", *extra))
