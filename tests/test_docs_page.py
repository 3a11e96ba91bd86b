"""The docs page at /, in a real headless Chromium: our title and description, nothing fetched from
anywhere but this server, and "Try it out" on /predict answers 200 (with an API key: after "Authorize")."""

from __future__ import annotations

import asyncio
import gzip
import http.client
from urllib.parse import urlsplit

import pytest
import requests
from testkit.chromium import Browser, Page

from serving import docs_page

API_KEY = "docs-page-key-7f3a"
PREDICT = "#operations-default-predict"


def predict_responses(page: Page) -> list[dict]:
    return [r for r in page.responses if urlsplit(r["url"]).path == "/predict"]


async def open_docs(page: Page, url: str) -> None:
    await page.open(f"{url}/")
    await page.wait_for("document.querySelectorAll('.opblock').length >= 2")


async def try_it_out(page: Page) -> int:
    """Expand /predict, "Try it out" (once), "Execute" with the example record; the answer's status."""
    answered = len(predict_responses(page))
    if not await page.evaluate(f"document.querySelector('{PREDICT} .btn.execute') !== null"):
        await page.click(f"{PREDICT} .opblock-summary-control")
        await page.click(f"{PREDICT} .try-out__btn")
    await page.click(f"{PREDICT} .btn.execute")
    await page.wait_for(f"document.querySelector('{PREDICT} .live-responses-table tbody .response-col_status') !== null")
    deadline = asyncio.get_running_loop().time() + 30
    while len(predict_responses(page)) == answered:
        assert asyncio.get_running_loop().time() < deadline, "no /predict response"
        await asyncio.sleep(0.05)
    return predict_responses(page)[-1]["status"]


def assert_nothing_left_the_server(page: Page, url: str, expected_errors: tuple[str, ...] = ()) -> None:
    origin = urlsplit(url).netloc
    outside = [r["url"] for r in page.requests if not r["url"].startswith("data:") and urlsplit(r["url"]).netloc != origin]
    assert not outside, outside
    fetched = {urlsplit(r["url"]).path for r in page.requests}
    assert {"/", "/docs.json", "/docs/swagger-ui-bundle.js", "/docs/swagger-ui.css"} <= fetched, fetched
    # A request the page's Content-Security-Policy refused would show here, not in page.requests.
    problems = [m for m in page.console if "Refused" in m or m.startswith(("exception", "error"))]
    assert not [m for m in problems if not any(e in m for e in expected_errors)], page.console


def test_the_docs_page_is_ours_fetches_only_from_this_server_and_try_it_out_answers(live_server):
    spec = requests.get(f"{live_server}/docs.json", timeout=10).json()

    async def scenario() -> None:
        async with Browser() as page:
            await open_docs(page, live_server)
            assert await page.evaluate("document.title") == spec["info"]["title"]
            shown = await page.evaluate("document.querySelector('.information-container').innerText")
            assert spec["info"]["title"] in shown and "Every error is JSON" in shown, shown
            text = await page.evaluate("document.body.innerText")
            assert "BentoML Prediction Service" not in text and "Powered by" not in text
            assert not await page.evaluate("document.querySelector('.btn.authorize') !== null"), "no key, no Authorize"
            assert await try_it_out(page) == 200
            answer = await page.evaluate(f"document.querySelector('{PREDICT} .live-responses-table tbody .response-col_description').innerText")
            assert '"predicted_class"' in answer, answer
            assert_nothing_left_the_server(page, live_server)
            (bundle,) = [r for r in page.responses if urlsplit(r["url"]).path == "/docs/swagger-ui-bundle.js"]
            assert bundle["headers"].get("content-encoding") == "gzip", "the browser got the script gzipped"

    asyncio.run(scenario())


def test_with_an_api_key_the_page_offers_authorize_and_try_it_out_sends_the_key(server_factory):
    server = server_factory({"XGB_API_KEY": API_KEY}, workers=1)
    spec = requests.get(f"{server.url}/docs.json", timeout=10).json()
    assert spec["components"]["securitySchemes"] == {"ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key",
                                                                "description": "The value of XGB_API_KEY"}}
    assert spec["paths"]["/predict"]["post"]["security"] == [{"ApiKey": []}]

    async def scenario() -> None:
        async with Browser() as page:
            await open_docs(page, server.url)
            assert await try_it_out(page) == 401  # before "Authorize"
            await page.click(".auth-wrapper .btn.authorize")
            await page.type_into(".modal-ux input", API_KEY)
            await page.click(".modal-ux .auth-btn-wrapper .btn.authorize")
            await page.click(".modal-ux .btn-done")
            assert await try_it_out(page) == 200
            sent = [r for r in page.requests if urlsplit(r["url"]).path == "/predict"][-1]
            assert {k.lower(): v for k, v in sent["headers"].items()}["x-api-key"] == API_KEY
            assert_nothing_left_the_server(page, server.url, expected_errors=("status of 401",))

    asyncio.run(scenario())


def test_an_unknown_path_answers_json_like_every_other_error(app_client):
    answer = app_client.get("/x", timeout=10)
    assert (answer.status_code, answer.headers["content-type"]) == (404, "application/json")
    assert answer.json() == {"error": "not found: /x", "detail": []}
    wrong_method = app_client.post("/healthz", timeout=10)
    assert wrong_method.status_code == 405 and wrong_method.json()["error"].startswith("method POST not allowed on /healthz")
    assert app_client.post("/", timeout=10).json() == {"error": "method POST not allowed on /: use GET", "detail": []}


def get(url: str, path: str, accept_encoding: str | None) -> http.client.HTTPResponse:
    """A GET with exactly this Accept-Encoding (none at all for None), its body read."""
    connection = http.client.HTTPConnection(urlsplit(url).netloc, timeout=10)
    connection.putrequest("GET", path, skip_accept_encoding=True)
    if accept_encoding is not None:
        connection.putheader("Accept-Encoding", accept_encoding)
    connection.endheaders()
    response = connection.getresponse()
    response.body = response.read()  # type: ignore[attr-defined]
    connection.close()
    return response


@pytest.mark.parametrize("accept_encoding,gzipped", [
    ("gzip, deflate, br", True), ("br;q=1.0, gzip;q=0.8", True), ("*", True), (None, False), ("identity", False),
    ("gzip;q=0", False), ("gzip;q=zero", False), ("deflate", False),
])  # fmt: skip
def test_swagger_files_are_cached_and_gzipped_for_clients_that_take_gzip(live_server, accept_encoding, gzipped):
    original = (docs_page.swagger_ui_static() / "swagger-ui-bundle.js").read_bytes()
    response = get(live_server, "/docs/swagger-ui-bundle.js", accept_encoding)
    assert response.status == 200
    assert response.getheader("content-encoding") == ("gzip" if gzipped else None)
    assert (gzip.decompress(response.body) if gzipped else response.body) == original
    assert int(response.getheader("content-length")) == len(response.body)
    assert response.getheader("cache-control") == "public, max-age=86400" and response.getheader("vary") == "accept-encoding"
    assert response.getheader("x-content-type-options") == "nosniff"
    if gzipped:
        assert len(response.body) < len(original) / 3


@pytest.mark.parametrize("path", ["/", "/docs.json", "/metadata"])
def test_what_describes_the_served_model_is_never_cached(live_server, path):
    response = get(live_server, path, "gzip")
    assert response.status == 200 and response.getheader("cache-control") == "no-store"
    assert response.getheader("content-encoding") is None
