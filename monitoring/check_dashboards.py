"""Run every Grafana dashboard query against a Prometheus and report which return data.

    python -m monitoring.check_dashboards [--prometheus http://127.0.0.1:9090] [--min-share 0.7]

`make monitor-check` runs it against `make monitor`'s Prometheus; exits non-zero when fewer than
--min-share of the queries return data. The live test uses `evaluate` on its own Prometheus.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import urllib.error
import urllib.parse
import urllib.request

from monitoring import dashboards

# What Grafana's $__rate_interval becomes with prometheus.yml's 15 s scrape interval (4 x 15 s).
RATE_INTERVAL = "1m"
INSTANCE_ALL = ".*"  # the dashboards' $instance variable set to All


def expand(expr: str, rate_interval: str = RATE_INTERVAL) -> str:
    """A dashboard query as Grafana sends it, with its variables filled in."""
    return expr.replace("$__rate_interval", rate_interval).replace("$instance", INSTANCE_ALL)


@dataclasses.dataclass(frozen=True)
class Result:
    dashboard: str
    panel: str
    expr: str
    has_data: bool
    error: str = ""


def run_query(prometheus_url: str, expr: str) -> dict:
    url = f"{prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:  # Prometheus answers a bad query with 400 and a JSON error
        return json.load(exc)


def evaluate(prometheus_url: str, rate_interval: str = RATE_INTERVAL) -> list[Result]:
    """Each dashboard query, with Grafana's $__rate_interval filled in; data = a finite value."""
    results = []
    for dashboard in dashboards.DASHBOARDS:
        for panel, query in dashboard.queries():
            body = run_query(prometheus_url, expand(query.expr, rate_interval))
            if body.get("status") != "success":
                results.append(Result(dashboard.uid, panel, query.expr, False, body.get("error", "query failed")))
                continue
            series = body["data"]["result"]
            has_data = any(math.isfinite(float(s["value"][1])) for s in series)
            results.append(Result(dashboard.uid, panel, query.expr, has_data))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--min-share", type=float, default=0.7)
    args = parser.parse_args(argv)
    try:
        results = evaluate(args.prometheus)
    except OSError as exc:
        sys.exit(f"cannot query Prometheus at {args.prometheus} ({exc}): is `make monitor` running?")
    for r in results:
        mark = "ok  " if r.has_data else ("ERR " if r.error else "--  ")
        print(f"{mark} {r.dashboard:12} {r.panel}{'  ' + r.error if r.error else ''}")
    share = sum(r.has_data for r in results) / len(results)
    print(f"{sum(r.has_data for r in results)} of {len(results)} dashboard queries return data ({share:.0%})")
    if share < args.min_share or any(r.error for r in results):
        sys.exit(f"fewer than {args.min_share:.0%} return data, or a query failed")


if __name__ == "__main__":
    main()
