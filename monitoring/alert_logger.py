"""A minimal Alertmanager webhook receiver: prints one line per alert it is sent.

Standard library only, so docker-compose runs it in a plain python image. The local stack
(`make monitor`) and the tests run it too; the tests pass `sink` to see what arrived.

    python monitoring/alert_logger.py [--host 0.0.0.0] [--port 5001]
"""

from __future__ import annotations

import argparse
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Sink = Callable[[dict], None]


def format_alert(alert: dict) -> str:
    labels = alert.get("labels", {})
    summary = alert.get("annotations", {}).get("summary", "")
    line = f"[{alert.get('status', '?').upper()}] {labels.get('alertname', '?')} ({labels.get('severity', '-')})"
    return f"{line}: {summary}" if summary else line


def make_server(host: str, port: int, sink: Sink | None = None) -> ThreadingHTTPServer:
    """An HTTP server that prints each alert of each webhook POST and hands the payload to `sink`."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            try:
                payload = json.loads(self.rfile.read(length))
            except ValueError:
                self.send_error(400, "expected an Alertmanager webhook JSON body")
                return
            for alert in payload.get("alerts", []):
                print(format_alert(alert), flush=True)
            if sink is not None:
                sink(payload)
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:  # one line per alert is enough
            pass

    return ThreadingHTTPServer((host, port), Handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="0.0.0.0")
    parser.add_argument("--port", type=int, default=5001)
    args = parser.parse_args(argv)
    server = make_server(args.host, args.port)
    print(f"alert logger: listening on http://{args.host}:{args.port}/alerts", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
