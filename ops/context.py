"""Everything a verb needs, in one object the CLI builds and the tests build with fakes."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

from ops.aws import Aws
from ops.runner import Runner
from ops.stack import Pulumi, Stack


@dataclass
class Context:
    stack: Stack
    aws: Aws
    run: Runner
    echo: Callable[[str], None] = print
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    confirm: Callable[[str], str] = input
    poll_seconds: float = 15
    rollout_timeout: float = 1200
    pulumi: Pulumi = field(init=False)

    def __post_init__(self) -> None:
        self.pulumi = Pulumi(self.stack, self.run)

    def client(self, service: str):
        return self.aws.client(service)
