"""The figures the docs state, checked against the code they describe.

Figures that a run produces (the benchmark's tables) are written into the docs by their tool
(`python -m loadtest.bench_report --write`); the ones here are defaults and counts in the code,
which the docs repeat in prose: when the code changes, this says which sentence to update.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess

from testkit.servers import REPO
from test_monitoring_live import NEEDS_CANDIDATE, NEEDS_NGINX

from monitoring import dashboards, localstack
from serving.settings import Settings

README = (REPO / "README.md").read_text()
MONITORING = (REPO / "docs/monitoring.md").read_text()


def prose(text: str) -> str:
    """Text with its line breaks as spaces: a sentence is found however the paragraph is wrapped."""
    return " ".join(text.split())


def default_settings(monkeypatch) -> Settings:
    for name in [n for n in os.environ if n.startswith("XGB_")]:
        monkeypatch.delenv(name)
    return Settings()


def settings_variables() -> dict[str, str]:
    """XGB_* environment variable -> the Settings field it sets."""
    return Settings.variables()


def readme_defaults() -> dict[str, str]:
    """The Configuration table: variable -> its documented default."""
    table = README.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        names = re.findall(r"`(XGB_\w+)`", cells[0])
        values = [v.strip(" `") for v in cells[1].split(" / ")] if len(cells) > 1 else []
        rows.update(zip(names, values if len(values) == len(names) else values * len(names)))
    return rows


def documented(value: str) -> object:
    if value in ("CPU count", "unset (off)"):
        return None  # "not set": the field's falsy default
    if value == "off":
        return 0.0  # a percentage whose "off" is 0 (XGB_CAPTURE)
    return float(value) if re.fullmatch(r"[\d.]+", value) else value


def test_the_readme_configuration_table_gives_each_variables_real_default(monkeypatch):
    defaults = default_settings(monkeypatch)
    variables = settings_variables()
    table = readme_defaults()
    assert set(table) == set(variables), {"documented, not read": set(table) - set(variables),
                                          "read, not documented": set(variables) - set(table)}
    for variable, field in variables.items():
        actual, stated = getattr(defaults, field), documented(table[variable])
        if stated is None:
            assert not actual, f"README: {variable} defaults to {actual!r}, not unset"
        elif isinstance(actual, bool):
            assert stated == ("1" if actual else "0") or stated == float(actual), f"README: {variable} default {table[variable]!r}, code {actual!r}"
        else:
            assert stated == actual, f"README: {variable} default {table[variable]!r}, code {actual!r}"


def test_the_readmes_prose_repeats_the_same_limits(monkeypatch):
    s = default_settings(monkeypatch)
    for sentence in (
        f"at most {s.max_batch_records:,} per request",
        f"body over {s.max_predict_bytes // 1024} KiB (`/predict`, `/explain`) or {s.max_batch_bytes // 2**20} MiB (`/predict_batch`, `/explain_batch`)",
        f"over {s.max_batch_records:,} records",
        f"`XGB_MAX_INFLIGHT` ({s.max_inflight})",
        f"`XGB_REQUEST_TIMEOUT_S` ({s.request_timeout_s:g} s) from arrival to answer",
    ):
        assert sentence in prose(README), f"README no longer says {sentence!r}: update it to the code's default"


def test_the_monitoring_docs_count_the_dashboard_queries_with_data_as_the_live_test_does():
    queries = [(dashboard.uid, panel) for dashboard in dashboards.DASHBOARDS for panel, _ in dashboard.queries()]
    nginx = sum(panel in NEEDS_NGINX for _, panel in queries)
    candidate = sum(panel in NEEDS_CANDIDATE for _, panel in queries)
    with_data = len(queries) - nginx - candidate
    sentence = (f"reports {with_data} of {len(queries)} dashboard queries returning data ({100 * with_data / len(queries):.0f} %). "
                f"The rest need nginx ({nginx} queries, docker-compose only) or a candidate model ({candidate}, the rollout row).")
    assert sentence in prose(MONITORING), f"docs/monitoring.md should say:\n{sentence}"


def test_make_monitor_passes_each_port_through_and_the_docs_give_the_same_defaults():
    defaults = localstack.Ports()
    variables = {field.name: f"{field.name.upper()}_PORT" for field in dataclasses.fields(localstack.Ports)}
    dry_run = subprocess.run(["make", "-n", "monitor"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    for name, variable in variables.items():
        assert f"--{name.replace('_', '-')}-port {getattr(defaults, name)}" in dry_run, (variable, dry_run)
    chosen = {variable: str(20000 + i) for i, variable in enumerate(variables.values())}
    dry_run = subprocess.run(["make", "-n", "monitor", *[f"{k}={v}" for k, v in chosen.items()]], cwd=REPO,
                             capture_output=True, text=True, check=True).stdout
    for name, variable in variables.items():
        assert f"--{name.replace('_', '-')}-port {chosen[variable]}" in dry_run, (variable, dry_run)
    check = subprocess.run(["make", "-n", "monitor-check", "PROMETHEUS_PORT=20000"], cwd=REPO, capture_output=True, text=True, check=True)
    assert "--prometheus http://127.0.0.1:20000" in check.stdout
    assert (f"Prometheus :{defaults.prometheus}, Alertmanager :{defaults.alertmanager}, "
            f"node exporter :{defaults.node_exporter}") in MONITORING
    for variable in variables.values():
        assert variable in MONITORING, f"docs/monitoring.md does not name {variable}"
