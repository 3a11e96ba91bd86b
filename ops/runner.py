"""Subprocess steps (bentoml, docker, pulumi): echoed before they run, failures made readable."""

from __future__ import annotations

import os
import shlex
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, TextIO

from ops.errors import OpsError

INSTALL_HINTS = {
    "pulumi": "install the Pulumi CLI: https://www.pulumi.com/docs/install/",
    "docker": "install Docker and start the daemon (bentoml containerize and the push need it)",
    "bentoml": "run `make install` and use the repository's .venv",
    "container/containerize.sh": "run ops from the repository root",
}


@dataclass
class Completed:
    returncode: int
    stdout: str = ""


class Runner:
    """Runs a command, streaming its output (to `stream`, default our stdout) unless `capture`;
    raises OpsError when it fails."""

    def __init__(self, echo: Callable[[str], None] = print, stream: Optional[TextIO] = None) -> None:
        self.echo = echo
        self.stream = stream

    def __call__(self, cmd: Sequence[str], *, cwd: Optional[Path] = None, stdin: Optional[str] = None,
                 capture: bool = False, check: bool = True, secret_stdin: bool = False,
                 env: Optional[dict[str, str]] = None) -> Completed:
        shown_env = "".join(f"{k}={shlex.quote(v)} " for k, v in (env or {}).items())
        self.echo(f"$ {shown_env}{shlex.join(cmd)}" + (" < (secret)" if secret_stdin else ""))
        try:
            proc = subprocess.run(list(cmd), cwd=cwd, input=stdin, text=True,
                                  env={**os.environ, **env} if env else None,
                                  stdout=subprocess.PIPE if capture else self.stream,
                                  stderr=subprocess.PIPE if capture else None)
        except FileNotFoundError:
            raise OpsError(f"`{cmd[0]}` not found: {INSTALL_HINTS.get(cmd[0], 'install it')}") from None
        if check and proc.returncode != 0:
            detail = (proc.stderr or proc.stdout or "").strip() if capture else ""
            raise OpsError(f"`{shlex.join(cmd[:3])} ...` failed (exit {proc.returncode})"
                           + (f": {detail[-2000:]}" if detail else ""))
        return Completed(proc.returncode, proc.stdout or "")
