"""BentoML's own Python clients call the service like HTTP does, and /schema.json agrees with /docs.json."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import bentoml
import numpy as np
import pytest
import requests

from testkit.probes import without_request_ids
from testkit.servers import REPO
from model_store.dataset import EXAMPLE_RECORD, sample_records


def http_predict(url: str, record: dict) -> dict:
    response = requests.post(f"{url}/predict", json=record, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def http_predict_batch(url: str, records: list[dict]) -> dict:
    response = requests.post(f"{url}/predict_batch", json={"instances": records}, timeout=30)
    assert response.status_code == 200, response.text
    return without_request_ids(response.json())


def client_answers(url: str, records: list[dict]) -> tuple[list[dict], dict, list[dict], dict]:
    """(predict per record, predict_batch) from the sync client, then the same from the async one."""
    with bentoml.SyncHTTPClient(url) as client:
        assert set(client.endpoints) == {"predict", "predict_batch", "explain", "explain_batch"}, "the internal predict_rows must not be listed"
        sync_single = [client.predict(**record) for record in records]
        sync_batch = client.predict_batch(instances=records)

    async def call_async() -> tuple[list[dict], dict]:
        async with bentoml.AsyncHTTPClient(url) as client:
            return [await client.predict(**record) for record in records], await client.predict_batch(instances=records)

    async_single, async_batch = asyncio.run(call_async())
    return async_single, without_request_ids(async_batch), sync_single, without_request_ids(sync_batch)


def test_bentoml_clients_answer_as_http_does(live_server):
    records = [EXAMPLE_RECORD, *sample_records(np.random.default_rng(21), 5)]
    async_single, async_batch, sync_single, sync_batch = client_answers(live_server, records)
    expected_single = [http_predict(live_server, record) for record in records]
    expected_batch = http_predict_batch(live_server, records)
    assert sync_single == expected_single and async_single == expected_single
    assert sync_batch == expected_batch and async_batch == expected_batch
    with bentoml.SyncHTTPClient(live_server) as client:
        with pytest.raises(bentoml.exceptions.BentoMLException) as refused:
            client.predict(**{**EXAMPLE_RECORD, "feat1": "55"})
        assert refused.value.error_code == 422 and "feat1" in str(refused.value)
        explained = client.explain(**EXAMPLE_RECORD)
        explained_batch = client.explain_batch(instances=records[:3])
    assert explained == requests.post(f"{live_server}/explain", json=EXAMPLE_RECORD, timeout=30).json()
    assert without_request_ids(explained_batch) == without_request_ids(
        requests.post(f"{live_server}/explain_batch", json={"instances": records[:3]}, timeout=30).json())


def test_schema_json_lists_what_docs_json_documents(live_server):
    schema = requests.get(f"{live_server}/schema.json", timeout=10).json()
    docs = requests.get(f"{live_server}/docs.json", timeout=10).json()
    routes = {route["route"]: route for route in schema["routes"]}
    posts = {path: item["post"] for path, item in docs["paths"].items() if "post" in item}
    assert routes.keys() == posts.keys() and {"/predict", "/predict_batch"} <= routes.keys()
    assert {route["name"] for route in routes.values()} == {op["operationId"] for op in posts.values()}
    components = docs["components"]["schemas"]

    def component(content: dict) -> dict:
        return components[content["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]]

    for path, operation in posts.items():
        documented_in, documented_out = component(operation["requestBody"]["content"]), component(operation["responses"]["200"]["content"])
        assert list(routes[path]["input"]["properties"]) == list(documented_in["properties"]), path
        assert sorted(routes[path]["input"]["required"]) == sorted(documented_in["required"]), path
        assert routes[path]["input"]["additionalProperties"] is documented_in["additionalProperties"] is False, path
        assert list(routes[path]["output"]["properties"]) == list(documented_out["properties"]), path
        if "instances" in documented_in["properties"]:
            batch, documented = routes[path]["input"]["properties"]["instances"], documented_in["properties"]["instances"]
            assert (batch["minItems"], batch["maxItems"]) == (documented["minItems"], documented["maxItems"]), path
            assert list(batch["items"]["properties"]) == list(components["Record"]["properties"]), path

def test_bentoml_clients_call_a_model_whose_fields_have_spaces_and_punctuation(server_factory, tmp_path):
    from testkit.byom_datasets import flowers_multiclass

    home = tmp_path / "home"
    data = flowers_multiclass(tmp_path / "flowers.csv")
    subprocess.run([sys.executable, "train_export.py", "--data", str(data), "--label", "species"], cwd=REPO,
                   env={**os.environ, "BENTOML_HOME": str(home)}, check=True, capture_output=True, timeout=300)  # fmt: skip
    server = server_factory({"BENTOML_HOME": str(home)}, workers=1)
    records = [
        {"petal length (cm)": 1.4, "petal width/cm": 0.2, "sepal.length": 5.1, "Farbe ü": "weiß"},
        {"petal length (cm)": 5.6, "petal width/cm": 2.1, "sepal.length": 6.5, "Farbe ü": "blue"},
    ]
    async_single, async_batch, sync_single, sync_batch = client_answers(server.url, records)
    expected_single = [http_predict(server.url, record) for record in records]
    assert [answer["predicted_label"] for answer in expected_single] == ["setosa", "virginica"]
    assert sync_single == async_single == expected_single
    assert sync_batch == async_batch == http_predict_batch(server.url, records)




def test_the_api_methods_called_in_process_answer_as_http_does(live_server):
    """`XGBoostService().predict(**record)` (a BentoML user's unit test, or bentoml.depends) is the API too."""
    code = (
        "import json\n"
        "from service import XGBoostService, RECORD\n"
        "from model_store.dataset import EXAMPLE_RECORD\n"
        "service = XGBoostService()\n"
        "instances = [RECORD.model_validate(EXAMPLE_RECORD)] * 2\n"
        "print(json.dumps({'predict': service.predict(**EXAMPLE_RECORD), 'predict_batch': service.predict_batch(instances),\n"
        "                  'explain': service.explain(**EXAMPLE_RECORD), 'explain_batch': service.explain_batch(instances)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env={**os.environ, "XGB_WORKERS": "1"},
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    answers = json.loads(done.stdout.strip().splitlines()[-1])
    over_http = {
        "predict": requests.post(f"{live_server}/predict", json=EXAMPLE_RECORD, timeout=30).json(),
        "predict_batch": http_predict_batch(live_server, [EXAMPLE_RECORD] * 2),
        "explain": requests.post(f"{live_server}/explain", json=EXAMPLE_RECORD, timeout=30).json(),
        "explain_batch": without_request_ids(requests.post(f"{live_server}/explain_batch", json={"instances": [EXAMPLE_RECORD] * 2}, timeout=30).json()),
    }
    assert answers == over_http
