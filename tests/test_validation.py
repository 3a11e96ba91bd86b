"""Every kind of bad input gets a 4xx JSON error naming the field and the problem, never a 500."""

from __future__ import annotations

import json

import pytest
import requests
from testkit.probes import exposed
from model_store.dataset import EXAMPLE_RECORD

JSON = {"Content-Type": "application/json"}


def with_value(field: str, raw: str) -> bytes:
    """The seed's example with one value replaced by raw JSON text (NaN, 1e999, ... are not valid Python JSON)."""
    body = json.dumps({**EXAMPLE_RECORD, field: "__RAW__"})
    return body.replace('"__RAW__"', raw).encode()


def without(field: str) -> bytes:
    return json.dumps({k: v for k, v in EXAMPLE_RECORD.items() if k != field}).encode()


CASES = {
    # name: (body, status, field named in the error or None)
    "missing field": (without("feat7"), 422, "feat7"),
    "unknown field": (json.dumps({**EXAMPLE_RECORD, "feat37": 1.0}).encode(), 422, "feat37"),
    "string number": (with_value("feat3", '"6750"'), 422, "feat3"),
    "boolean": (with_value("feat11", "true"), 422, "feat11"),
    "null": (with_value("feat2", "null"), 422, "feat2"),
    "NaN": (with_value("feat1", "NaN"), 422, "feat1"),
    "Infinity": (with_value("feat1", "Infinity"), 422, "feat1"),
    "-Infinity": (with_value("feat4", "-Infinity"), 422, "feat4"),
    "overflow 1e999": (with_value("feat3", "1e999"), 422, "feat3"),
    "nested object": (with_value("feat5", '{"a": 1}'), 422, "feat5"),
    "list value": (with_value("feat5", "[1, 2]"), 422, "feat5"),
    "malformed JSON": (b'{"feat1": 55.0,', 400, None),
    "empty body": (b"", 400, None),
    "array body": (b"[1, 2, 3]", 422, None),
    "string body": (b'"hello"', 422, None),
    "deeply nested junk": (b"[" * 100_00 + b"]" * 100_00, 400, None),
    "non-UTF-8 bytes": (b'{"feat1": "\xff\xfe"}', 400, None),
}


@pytest.mark.parametrize("name", CASES)
def test_bad_single_record_is_refused_with_json(app_client, name):
    body, status, field = CASES[name]
    response = app_client.post("/predict", data=body, headers=JSON, timeout=10)
    assert response.status_code == status, response.text
    error = response.json()
    assert error["error"], "the error must say what is wrong"
    if field is not None:
        assert field in error["error"]
        assert any(field in d["loc"] for d in error["detail"]), error
    assert "Traceback" not in response.text and "/work/" not in response.text and ".py" not in response.text


def test_all_problems_are_listed_not_just_the_first(app_client):
    body = json.dumps({**{k: v for k, v in EXAMPLE_RECORD.items() if k != "feat9"}, "feat1": "x", "extra": 1})
    error = app_client.post("/predict", data=body, headers=JSON, timeout=10).json()
    named = {d["loc"][-1] for d in error["detail"]}
    assert {"feat1", "feat9", "extra"} <= named


def test_integers_are_numbers_too(app_client):
    body = {k: int(v) for k, v in EXAMPLE_RECORD.items()}
    assert app_client.post("/predict", json=body, timeout=10).status_code == 200


@pytest.mark.parametrize("encoding,named", [("utf-8-sig", "byte order mark"), ("utf-16", "UTF-16")])
def test_a_body_from_a_windows_tool_is_400_saying_how_it_is_encoded(app_client, encoding, named):
    body = json.dumps(EXAMPLE_RECORD).encode(encoding)
    response = app_client.post("/predict", data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 400, response.text[:300]
    assert named in response.json()["error"] and response.json()["error"].startswith("malformed JSON")


def test_a_field_given_twice_is_422_naming_it(app_client):
    body = json.dumps(EXAMPLE_RECORD)[:-1] + ', "feat7": 1e6}'
    response = app_client.post("/predict", data=body, headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 422, response.text[:300]
    assert response.json()["detail"] == [{"loc": ["feat7"], "msg": "given more than once: a field may appear once", "type": "repeated_field"}]


def test_wrong_content_type_is_415(app_client):
    response = app_client.post("/predict", data=json.dumps(EXAMPLE_RECORD), headers={"Content-Type": "text/plain"}, timeout=10
    )
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]


@pytest.mark.parametrize("path", ["/predict", "/predict_batch", "/explain"])
def test_a_compressed_body_is_415_naming_the_encoding(app_client, path):
    import gzip

    record = EXAMPLE_RECORD if path != "/predict_batch" else {"instances": [EXAMPLE_RECORD]}
    response = app_client.post(path, data=gzip.compress(json.dumps(record).encode()), timeout=10,
                               headers={"Content-Type": "application/json", "Content-Encoding": "gzip"})  # fmt: skip
    assert response.status_code == 415
    assert "'gzip'" in response.json()["error"] and "uncompressed" in response.json()["error"]
    plain = app_client.post(path, data=json.dumps(record), headers={"Content-Type": "application/json", "Content-Encoding": "identity"}, timeout=10)
    assert plain.status_code == 200, plain.text[:300]


def _chunks(body: bytes, size: int = 64 * 1024):
    for i in range(0, len(body), size):
        yield body[i : i + size]


def _post_urllib(url: str, body: bytes, chunked: bool) -> tuple[int, bytes]:
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, data=_chunks(body) if chunked else body, headers=JSON)
    if chunked:
        request.add_header("Transfer-Encoding", "chunked")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _post_requests(url: str, body: bytes, chunked: bool) -> tuple[int, bytes]:
    response = requests.post(url, data=_chunks(body) if chunked else body, headers=JSON, timeout=30)
    return response.status_code, response.content


def _post_http_client(url: str, body: bytes, chunked: bool) -> tuple[int, bytes]:
    import http.client
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
    try:
        connection.request("POST", parts.path, body=_chunks(body) if chunked else body, headers=JSON, encode_chunked=chunked)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _post_curl(url: str, body: bytes, chunked: bool, tmp_path) -> tuple[int, bytes]:
    import subprocess

    path = tmp_path / "body.json"
    path.write_bytes(body)
    out = tmp_path / "answer.json"
    headers = ["-H", "Content-Type: application/json"] + (["-H", "Transfer-Encoding: chunked"] if chunked else [])
    result = subprocess.run(["curl", "-sS", "-o", str(out), "-w", "%{http_code}", *headers, "--data-binary", f"@{path}", url],
                            capture_output=True, text=True, timeout=60)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return int(result.stdout), out.read_bytes()


CLIENTS = {"urllib": _post_urllib, "requests": _post_requests, "http.client": _post_http_client, "curl": _post_curl}


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
@pytest.mark.parametrize("client", CLIENTS)
@pytest.mark.parametrize("path,size", [("/predict", 8 * 1024 * 1024), ("/predict_batch", 20 * 1024 * 1024)])
def test_oversize_body_is_413_for_every_client(live_server, path, size, client, chunked, tmp_path):
    # Clients that send their whole body before reading (urllib, http.client, requests with
    # Connection: close) got a connection reset when the server closed on them mid-body.
    body = b'{"pad": "' + b"x" * size + b'"}'
    post = CLIENTS[client]
    status, answer = post(f"{live_server}{path}", body, chunked, tmp_path) if client == "curl" else post(f"{live_server}{path}", body, chunked)
    assert status == 413, answer[:300]
    assert "limit" in json.loads(answer)["error"]


def test_a_chunked_body_sent_after_100_continue_is_read_before_the_413(live_server):
    """curl sends `Expect: 100-continue` for big bodies. A chunked one has no length to refuse it by,
    so the server asks for it (the 100 goes out) and must then read what the client sends: closing
    on a sending client resets the connection, and the 413 is lost (curl: "Send failure")."""
    import socket

    from testkit.probes import read_response

    host, port = live_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\nExpect: 100-continue\r\n\r\n")  # fmt: skip
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 "), "the server asks for the body"
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        sock.sendall(chunk * (3 * 8 * 1024 * 1024 // 65536) + b"0\r\n\r\n")  # three times the limit
        answer = read_response(sock)
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:300]
    assert b"limit" in answer


def test_a_client_that_never_ends_its_body_is_cut_off(live_server):
    """The refused body is read and dropped only for a bounded time: then the connection is closed."""
    import socket
    import time

    from serving.body import LINGER_SECONDS

    host, port = live_server.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        sock.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n")
        started = time.monotonic()
        chunk = b"%x\r\n%s\r\n" % (65536, b"x" * 65536)
        try:
            while time.monotonic() - started < 20:
                sock.sendall(chunk)
                time.sleep(0.01)
        except (BrokenPipeError, ConnectionResetError):
            pass
        cut_off_after = time.monotonic() - started
    assert cut_off_after < LINGER_SECONDS + 5, f"the connection stayed open {cut_off_after:.1f} s"
    assert requests.post(f"{live_server}/predict", json=EXAMPLE_RECORD, timeout=10).status_code == 200


def test_get_on_predict_is_405(app_client):
    response = app_client.get("/predict", timeout=10)
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


@pytest.mark.parametrize(
    "body,status,named",
    [
        ({"instances": []}, 422, "instances"),
        ({"instances": [EXAMPLE_RECORD] * 5001}, 422, "instances"),
        ({"records": [EXAMPLE_RECORD]}, 422, "records"),
        ({"instances": [EXAMPLE_RECORD, {**EXAMPLE_RECORD, "feat2": "two"}]}, 422, "instances.1.feat2"),
        ({"instances": EXAMPLE_RECORD}, 422, "instances"),
    ],
    ids=["empty", "over the maximum", "wrong key", "bad record names its index", "not a list"],
)
def test_bad_batch_is_refused(app_client, body, status, named):
    response = app_client.post("/predict_batch", json=body, timeout=30)
    assert response.status_code == status, response.text[:300]
    assert named in response.json()["error"]


OUT_OF_RANGE_FEAT1 = 'xgb_input_out_of_range_total{feature="feat1"}'
RECORDS_CHECKED = "xgb_input_records_checked_total"  # the out-of-range ratio's denominator


def test_out_of_range_is_counted_by_default(live_server):
    before = exposed(live_server, OUT_OF_RANGE_FEAT1), exposed(live_server, RECORDS_CHECKED)
    response = requests.post(f"{live_server}/predict", json={**EXAMPLE_RECORD, "feat1": 500.0}, timeout=10)
    assert response.status_code == 200
    assert exposed(live_server, OUT_OF_RANGE_FEAT1) == before[0] + 1
    assert exposed(live_server, RECORDS_CHECKED) >= before[1] + 1  # other tests may predict meanwhile


def test_out_of_range_is_refused_when_configured(server_factory):
    server = server_factory({"XGB_RANGE_CHECK": "reject"}, workers=1)
    response = requests.post(f"{server.url}/predict", json={**EXAMPLE_RECORD, "feat1": 500.0, "feat12": 0.5}, timeout=10)
    assert response.status_code == 422
    error = response.json()
    assert {d["loc"][0] for d in error["detail"]} == {"feat1", "feat12"}
    assert "between 0 and 120" in error["detail"][0]["msg"] and "0 or 1" in error["detail"][1]["msg"]
    # A refused batch counts its records as checked: 1 of 3 out of range, not 1 per refused request.
    batch = {"instances": [EXAMPLE_RECORD, {**EXAMPLE_RECORD, "feat1": 500.0}, EXAMPLE_RECORD]}
    assert requests.post(f"{server.url}/predict_batch", json=batch, timeout=10).status_code == 422
    assert (exposed(server.url, OUT_OF_RANGE_FEAT1), exposed(server.url, RECORDS_CHECKED)) == (2, 4)
    assert requests.post(f"{server.url}/predict", json=EXAMPLE_RECORD, timeout=10).status_code == 200
