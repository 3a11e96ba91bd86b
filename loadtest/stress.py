"""Headless Locust runs reproducing the seed's scripts/api-stress-test.sh modes, with our SLOs.

    python -m loadtest.stress MODE [--host URL] [--rate R] [--duration D] [extra Locust options]

    single   one /predict with the seed's example record; prints the answer
    quick    mixed traffic at 10 req/s for 10 s
    stress   mixed traffic at 300 req/s for 60 s
    health   the liveness and readiness endpoints at 10 req/s for 5 s

The rate is constant whatever the latency (Locust's constant_throughput, users x per-user rate).
Locust prints the summary and the SLO verdict (0 failures, p99 < 100 ms, rate within 10 % of
the target) and exits 1 when one is missed. CSV and HTML reports go to loadtest/reports/.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
import urllib.error
import urllib.request
from pathlib import Path

LOADTEST = Path(__file__).resolve().parent
LOCUSTFILE = LOADTEST / "locustfile.py"
REPORTS = LOADTEST / "reports"
# A user waits for each answer before its next request, so it can hold its rate only while
# answers take less than 1 / its rate: at 5 req/s a user keeps pace up to 200 ms, twice the p99
# objective, so a slow service shows up as latency rather than as a generator falling short.
MAX_USER_RPS = 5.0
# Spawning users fast (each then waits a random phase) keeps the ramp-up from eating into the
# achieved rate of a short run; Locust warns above 100 users/s.
MAX_SPAWN_RATE = 100


@dataclasses.dataclass(frozen=True)
class Mode:
    user_class: str
    rate: float  # req/s; 0 for a one-shot run
    duration_s: float
    description: str


MODES = {
    "single": Mode("ExampleUser", 0, 30, "one /predict with the seed's example record"),
    "quick": Mode("ApiUser", 10, 10, "mixed traffic at 10 req/s for 10 s"),
    "stress": Mode("ApiUser", 300, 60, "mixed traffic at 300 req/s for 60 s"),
    "health": Mode("HealthUser", 10, 5, "health and readiness checks at 10 req/s for 5 s"),
}


def locust_command(mode_name: str, mode: Mode, host: str, reports: Path, extra: list[str]) -> list[str]:
    users = max(1, math.ceil(mode.rate / MAX_USER_RPS))
    report = reports / mode_name
    command = [
        str(Path(sys.executable).parent / "locust"),
        "-f", str(LOCUSTFILE),
        "--headless",
        "--only-summary",
        "--host", host,
        "--users", str(users),
        "--spawn-rate", str(min(MAX_SPAWN_RATE, users * 10)),
        "--run-time", f"{mode.duration_s:g}s",
        "--csv", str(report),
        "--html", f"{report}.html",
    ]  # fmt: skip
    if mode.rate:
        command += ["--user-rps", f"{mode.rate / users:g}", "--target-rps", f"{mode.rate:g}"]
    return [*command, *extra, mode.user_class]


def check_reachable(host: str) -> None:
    """Fail fast with a readable message rather than a run of connection errors."""
    try:
        with urllib.request.urlopen(f"{host.rstrip('/')}/readyz", timeout=5) as resp:
            resp.read()
    except urllib.error.HTTPError as exc:
        sys.exit(f"{host}/readyz answered HTTP {exc.code}: the service is not ready (model not loaded?)")
    except (urllib.error.URLError, OSError) as exc:
        sys.exit(f"cannot reach the service at {host} ({exc}): start it with `make serve` or pass HOST=...")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("mode", choices=MODES)
    parser.add_argument("--host", default="http://localhost:3000", help="service base URL (default http://localhost:3000)")
    parser.add_argument("--rate", type=float, help="override the mode's request rate (req/s)")
    parser.add_argument("--duration", type=float, help="override the mode's duration (seconds)")
    parser.add_argument("--reports", type=Path, default=REPORTS, help=f"folder for the CSV and HTML reports (default {REPORTS})")
    args, extra = parser.parse_known_args(argv)
    if not args.host.startswith(("http://", "https://")):
        parser.error(f"--host must be a URL like http://localhost:3000, got {args.host!r}")
    mode = MODES[args.mode]
    if args.mode != "single":
        mode = dataclasses.replace(mode, rate=args.rate or mode.rate, duration_s=args.duration or mode.duration_s)
    check_reachable(args.host)
    args.reports.mkdir(parents=True, exist_ok=True)
    command = locust_command(args.mode, mode, args.host, args.reports, extra)
    what = mode.description if (args.rate, args.duration) == (None, None) else f"{mode.user_class} at {mode.rate:g} req/s for {mode.duration_s:g} s"
    print(f"==> {args.mode}: {what} against {args.host}\n    {' '.join(command)}", flush=True)
    os.execv(command[0], command)  # Locust's exit code is ours: 1 when an SLO is missed


if __name__ == "__main__":
    main()
