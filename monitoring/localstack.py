"""The no-Docker monitoring stack: Prometheus, Alertmanager and node exporter from the Debian
packages plus the alert logger, scraping a service on 127.0.0.1. `make monitor` runs it in the
foreground (Ctrl-C stops everything); the tests run it on free ports.

Its configs are derived from the docker-compose ones (prometheus.yml, alertmanager.yml): same
jobs, rules and routing, only the addresses change (LOCAL_COUNTERPARTS), so the two cannot drift.

    python -m monitoring.localstack [--target 127.0.0.1:3000] [--workdir .build/monitor]
"""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

import yaml

from monitoring import alert_logger
from testkit.waiting import NotReady, http_ready

MONITORING_DIR = Path(__file__).resolve().parent
PROMETHEUS_CONFIG = MONITORING_DIR / "prometheus.yml"
ALERTMANAGER_CONFIG = MONITORING_DIR / "alertmanager.yml"
# prometheus.yml's rule_files, relative to it: every file in rules/ (a glob Prometheus expands).
RULE_FILES = [MONITORING_DIR / pattern for pattern in yaml.safe_load(PROMETHEUS_CONFIG.read_text())["rule_files"]]
# Debian package binaries (APT_PACKAGES in mk/monitor.mk)
PROMETHEUS_BIN = "prometheus"
ALERTMANAGER_BIN = "prometheus-alertmanager"
NODE_EXPORTER_BIN = "prometheus-node-exporter"


@dataclasses.dataclass(frozen=True)
class Ports:
    prometheus: int = 9090
    alertmanager: int = 9093
    node_exporter: int = 9100
    alert_logger: int = 5001


def local_counterparts(service_target: str, ports: Ports) -> dict[str, str | None]:
    """docker-compose address -> the local process standing in for it (None: not run locally)."""
    return {
        "xgb-service:3000": service_target,
        "host.docker.internal:9100": f"127.0.0.1:{ports.node_exporter}",  # node exporter, on the host's network
        "nginx-exporter:9113": None,  # no nginx in front of a local `make serve`
        "alertmanager:9093": f"127.0.0.1:{ports.alertmanager}",
        "localhost:9090": f"127.0.0.1:{ports.prometheus}",
        "alert-logger:5001": f"127.0.0.1:{ports.alert_logger}",
    }


def rule_paths() -> list[Path]:
    """The rule files Prometheus loads (RULE_FILES expanded)."""
    return sorted(path for pattern in RULE_FILES for path in pattern.parent.glob(pattern.name))


def _local(address: str, counterparts: dict[str, str | None]) -> str | None:
    if address not in counterparts:
        raise KeyError(f"{address} (in a docker-compose config) has no local counterpart: add it to local_counterparts()")
    return counterparts[address]


def local_prometheus_config(
    service_target: str, ports: Ports, rule_files: list[Path] | None = None, interval: str | None = None
) -> dict:
    """prometheus.yml with local addresses; jobs without a local counterpart are left out."""
    config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    counterparts = local_counterparts(service_target, ports)
    config["rule_files"] = [str(p) for p in (rule_files or RULE_FILES)]
    if interval:
        config["global"]["scrape_interval"] = config["global"]["evaluation_interval"] = interval
    for alertmanager in config["alerting"]["alertmanagers"]:
        for static in alertmanager["static_configs"]:
            static["targets"] = [_local(t, counterparts) for t in static["targets"]]
    jobs = []
    for job in config["scrape_configs"]:
        targets = [_local(t, counterparts) for static in job["static_configs"] for t in static["targets"]]
        if None in targets:
            continue
        jobs.append({**job, "static_configs": [{"targets": targets}]})
    config["scrape_configs"] = jobs
    return config


def local_alertmanager_config(ports: Ports) -> dict:
    """alertmanager.yml with the webhooks pointed at the local alert logger."""
    config = yaml.safe_load(ALERTMANAGER_CONFIG.read_text())
    counterparts = local_counterparts("", ports)
    for receiver in config["receivers"]:
        for webhook in receiver.get("webhook_configs", []):
            host_port, _, path = webhook["url"].removeprefix("http://").partition("/")
            webhook["url"] = f"http://{_local(host_port, counterparts)}/{path}"
    return config


def _wait_http_ok(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    def running() -> str | None:
        return None if proc.poll() is None else f"{proc.args[0]} exited with {proc.returncode}:\n{log.read_text()[-2000:]}"

    try:
        http_ready(url, timeout, alive=running)
    except NotReady as exc:
        raise RuntimeError(f"{exc}; log: {log}") from None


class LocalStack:
    """Prometheus + Alertmanager + node exporter processes and an in-process alert logger.

    Configs, data and logs live in `workdir`. `alertmanager_config`/`rule_files` override the
    derived defaults (the tests shorten waits); `alert_sink` receives each webhook payload.
    """

    def __init__(
        self,
        workdir: Path,
        service_target: str,
        ports: Ports = Ports(),
        interval: str | None = None,
        rule_files: list[Path] | None = None,
        alertmanager_config: dict | None = None,
        alert_sink: Callable[[dict], None] | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.ports = ports
        self.prometheus_url = f"http://127.0.0.1:{ports.prometheus}"
        self.alertmanager_url = f"http://127.0.0.1:{ports.alertmanager}"
        self.prometheus_config = local_prometheus_config(service_target, ports, rule_files, interval)
        self.alertmanager_config = alertmanager_config or local_alertmanager_config(ports)
        self.alert_sink = alert_sink
        self.procs: list[subprocess.Popen] = []
        self.logger: alert_logger.ThreadingHTTPServer | None = None

    def _spawn(self, name: str, argv: list[str]) -> tuple[subprocess.Popen, Path]:
        if shutil.which(argv[0]) is None:
            raise RuntimeError(f"{argv[0]} not found: run `make sysdeps` (Debian packages in mk/monitor.mk)")
        log = self.workdir / f"{name}.log"
        # Own session: Ctrl-C reaches only the supervisor, which stops the processes in order.
        with log.open("wb") as out:
            proc = subprocess.Popen(
                argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self.procs.append(proc)
        return proc, log

    def start(self, timeout: float = 30) -> "LocalStack":
        self.workdir.mkdir(parents=True, exist_ok=True)
        prometheus_yml = self.workdir / "prometheus.yml"
        alertmanager_yml = self.workdir / "alertmanager.yml"
        prometheus_yml.write_text(yaml.safe_dump(self.prometheus_config, sort_keys=False))
        alertmanager_yml.write_text(yaml.safe_dump(self.alertmanager_config, sort_keys=False))
        try:
            self.logger = alert_logger.make_server("127.0.0.1", self.ports.alert_logger, self.alert_sink)
            threading.Thread(target=self.logger.serve_forever, daemon=True).start()
            node, node_log = self._spawn(
                "node-exporter", [NODE_EXPORTER_BIN, f"--web.listen-address=127.0.0.1:{self.ports.node_exporter}"]
            )
            alertmanager, am_log = self._spawn("alertmanager", [
                ALERTMANAGER_BIN,
                f"--config.file={alertmanager_yml}",
                f"--storage.path={self.workdir / 'alertmanager-data'}",
                f"--web.listen-address=127.0.0.1:{self.ports.alertmanager}",
                "--cluster.listen-address=",  # a single instance: no gossip port
            ])  # fmt: skip
            prometheus, prom_log = self._spawn("prometheus", [
                PROMETHEUS_BIN,
                f"--config.file={prometheus_yml}",
                f"--storage.tsdb.path={self.workdir / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{self.ports.prometheus}",
            ])  # fmt: skip
            _wait_http_ok(f"http://127.0.0.1:{self.ports.node_exporter}/", node, node_log, timeout)
            _wait_http_ok(f"{self.alertmanager_url}/-/ready", alertmanager, am_log, timeout)
            _wait_http_ok(f"{self.prometheus_url}/-/ready", prometheus, prom_log, timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        self.procs.clear()
        if self.logger is not None:
            self.logger.shutdown()
            self.logger.server_close()
            self.logger = None

    def __enter__(self) -> "LocalStack":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Run Prometheus + Alertmanager + node exporter locally (Ctrl-C stops).")
    parser.add_argument("--target", default="127.0.0.1:3000", help="the service's host:port (default %(default)s)")
    parser.add_argument("--workdir", type=Path, default=Path(".build/monitor"), help="configs, data and logs")
    for field in dataclasses.fields(Ports):
        parser.add_argument(f"--{field.name.replace('_', '-')}-port", type=int, default=field.default, dest=field.name)
    args = parser.parse_args(argv)
    ports = Ports(**{field.name: getattr(args, field.name) for field in dataclasses.fields(Ports)})
    # Ctrl-C and `kill PID` both stop the stack cleanly (SIGINT may be ignored in background jobs).
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.default_int_handler)
    stack = LocalStack(args.workdir, args.target, ports)
    print(f"==> starting Prometheus, Alertmanager, node exporter (configs, data, logs: {args.workdir}/)", flush=True)
    try:
        stack.start()
    except (RuntimeError, OSError) as exc:  # e.g. a port already in use: the log tail says so
        sys.exit(f"could not start the monitoring stack: {exc}")
    try:
        print(f"Prometheus   {stack.prometheus_url}  (scraping the service at {args.target})", flush=True)
        print(f"Alertmanager {stack.alertmanager_url}", flush=True)
        print("Alerts sent to the webhook are printed below. Ctrl-C stops everything.", flush=True)
        while all(proc.poll() is None for proc in stack.procs):
            time.sleep(1)
        dead = [proc.args[0] for proc in stack.procs if proc.poll() is not None]
        sys.exit(f"{', '.join(dead)} exited; see the logs in {args.workdir}/")
    except KeyboardInterrupt:
        print("\n==> stopping", flush=True)
    finally:
        stack.stop()


if __name__ == "__main__":
    main()
