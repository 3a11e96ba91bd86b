"""Headless Chromium (Debian's `chromium`) driven over its DevTools protocol, with aiohttp's websocket client.

Records every request the page makes (Network.requestWillBeSent), every response, console message
and uncaught exception, so a test can check what a reader's browser would fetch and show.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--no-default-browser-check", "--remote-debugging-port=0",
    # No name resolves: a request the page makes elsewhere is still recorded, but goes nowhere.
    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
]  # fmt: skip


class Browser:
    """One Chromium process and its first page; `async with Browser() as page:`."""

    def __init__(self) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="chromium-profile-"))
        self.proc: subprocess.Popen | None = None
        self.session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> "Page":
        self.proc = subprocess.Popen([CHROMIUM, *FLAGS, f"--user-data-dir={self.profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = self.profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"chromium did not start (exit code {self.proc.poll()})")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        self.session = aiohttp.ClientSession()
        async with self.session.get(f"http://127.0.0.1:{port}/json/list") as answer:
            target = next(t for t in await answer.json() if t["type"] == "page")
        page = Page(await self.session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0))
        await page.start()
        return page

    async def __aexit__(self, *exc: Any) -> None:
        if self.session is not None:
            await self.session.close()
        if self.proc is not None:  # the browser and its renderer, GPU and zygote processes: one process group
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(10)
        shutil.rmtree(self.profile, ignore_errors=True)

    def _signal_group(self, signum: int) -> None:
        try:
            os.killpg(self.proc.pid, signum)
        except ProcessLookupError:
            pass  # already gone


class Page:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.requests: list[dict[str, Any]] = []  # Network.requestWillBeSent's `request`s
        self.responses: list[dict[str, Any]] = []  # Network.responseReceived's `response`s
        self.console: list[str] = []  # console messages, browser log entries and uncaught exceptions
        self.loaded = asyncio.Event()

    async def start(self) -> None:
        self.reader = asyncio.get_running_loop().create_task(self._read())
        for domain in ("Network", "Page", "Runtime", "Log"):
            await self.send(f"{domain}.enable")

    async def _read(self) -> None:
        async for message in self.ws:
            data = json.loads(message.data)
            if "id" in data:
                future = self.pending.pop(data["id"])
                if "error" in data:
                    future.set_exception(RuntimeError(f"DevTools: {data['error']}"))
                else:
                    future.set_result(data.get("result", {}))
                continue
            method, params = data.get("method"), data.get("params", {})
            if method == "Network.requestWillBeSent":
                self.requests.append(params["request"])
            elif method == "Network.responseReceived":
                self.responses.append(params["response"])
            elif method == "Page.loadEventFired":
                self.loaded.set()
            elif method == "Runtime.consoleAPICalled":
                self.console.append(" ".join(str(a.get("value", a.get("description", ""))) for a in params["args"]))
            elif method == "Runtime.exceptionThrown":
                self.console.append(f"exception: {params['exceptionDetails']}")
            elif method == "Log.entryAdded":
                self.console.append(f"{params['entry']['level']}: {params['entry']['text']}")

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        number = next(self.ids)
        self.pending[number] = asyncio.get_running_loop().create_future()
        await self.ws.send_json({"id": number, "method": method, "params": params})
        return await asyncio.wait_for(self.pending[number], 60)

    async def open(self, url: str) -> None:
        self.loaded.clear()
        await self.send("Page.navigate", url=url)
        await asyncio.wait_for(self.loaded.wait(), 60)

    async def evaluate(self, expression: str) -> Any:
        result = await self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def wait_for(self, expression: str, timeout: float = 60) -> Any:
        """The value of `expression` once it is truthy."""
        deadline = time.monotonic() + timeout
        while True:
            value = await self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"still false after {timeout} s: {expression}")
            await asyncio.sleep(0.1)

    async def click(self, selector: str) -> None:
        await self.wait_for(f"document.querySelector({json.dumps(selector)}) !== null")
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).click()")

    async def type_into(self, selector: str, text: str) -> None:
        """Types as a user would (React sees the input events), into the element `selector`."""
        await self.wait_for(f"document.querySelector({json.dumps(selector)}) !== null")
        await self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        await self.send("Input.insertText", text=text)
