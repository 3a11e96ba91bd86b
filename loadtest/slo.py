"""The SLO verdict of a load test, from Locust's statistics (the locustfile turns them into Rows).

Plain data, no Locust import: importing Locust monkey-patches the process with gevent, which
only a Locust process should have.

Our objectives are stricter than the seed's (> 90-95 % success, average < 1 s): no failed request
at all, a 99th-percentile latency under 100 ms, and, when a target rate was set, an achieved rate
within 10 % of it (a run that could not generate its load proves nothing about the service).
"""

from __future__ import annotations

import dataclasses

RATE_TOLERANCE = 0.10


@dataclasses.dataclass(frozen=True)
class Objectives:
    max_failures: int = 0
    p99_ms: float = 100.0
    target_rps: float = 0.0  # 0: no rate objective


@dataclasses.dataclass(frozen=True)
class Row:
    """Requests, failures, achieved rate and latency percentiles of one endpoint or of everything."""

    name: str
    requests: int
    failures: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float


@dataclasses.dataclass(frozen=True)
class Verdict:
    total: Row
    endpoints: list[Row]
    objectives: Objectives
    violations: list[str]

    @property
    def passed(self) -> bool:
        return not self.violations

    def report(self) -> str:
        header = f"{'request':<34}{'requests':>9}{'failures':>9}{'req/s':>9}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'max ms':>8}"
        lines = ["", "=" * len(header), header, "-" * len(header)]
        for row in [*self.endpoints, self.total]:
            if row is self.total:
                lines.append("-" * len(header))
            lines.append(
                f"{row.name[:33]:<34}{row.requests:>9}{row.failures:>9}{row.rps:>9.1f}"
                f"{row.p50_ms:>8.0f}{row.p95_ms:>8.0f}{row.p99_ms:>8.0f}{row.max_ms:>8.0f}"
            )
        o = self.objectives
        goals = [f"failures <= {o.max_failures}", f"p99 < {o.p99_ms:g} ms"]
        if o.target_rps:
            goals.append(f"rate {o.target_rps:g} req/s +/- {RATE_TOLERANCE:.0%}")
        lines.append("-" * len(header))
        lines.append(f"SLO ({', '.join(goals)}): " + ("PASS" if self.passed else "FAIL"))
        lines.extend(f"  - {v}" for v in self.violations)
        lines.append("=" * len(header))
        return "\n".join(lines)


def judge(total: Row, endpoints: list[Row], objectives: Objectives) -> Verdict:
    violations = []
    if total.requests == 0:
        violations.append("no request was made")
    if total.failures > objectives.max_failures:
        violations.append(f"{total.failures} failed request(s), at most {objectives.max_failures} allowed")
    if total.p99_ms >= objectives.p99_ms:
        violations.append(f"p99 latency {total.p99_ms:.0f} ms is not under {objectives.p99_ms:g} ms")
    if objectives.target_rps and abs(total.rps - objectives.target_rps) > RATE_TOLERANCE * objectives.target_rps:
        violations.append(
            f"achieved {total.rps:.1f} req/s, not within {RATE_TOLERANCE:.0%} of the {objectives.target_rps:g} req/s target"
        )
    return Verdict(total, endpoints, objectives, violations)
