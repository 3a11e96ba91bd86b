"""Models published to S3 and imported at start (model_store/source.py), against moto's server mode
(a real HTTP S3 endpoint on 127.0.0.1) and real `bentoml serve` processes: the published model is
served; a missing or corrupt object stops the server with one line and a non-zero exit, and leaves
nothing in the store. The built Bento is served too as the image serves it on ECS: `bentoml serve
<bento>` from the Bento's read-only directory, / read-only, BENTOML_HOME on the writable /tmp."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import boto3
import pytest
import requests
from moto.server import ThreadedMotoServer

from testkit.servers import BENTOML, REPO, Server, bentoml_serve, environment, free_port, read_only_root
from model_store.source import ModelUri, import_configured_models, publish

sys.path.insert(0, str(REPO / "infra_pulumi"))
from ml_api_infra.mocks import task_container  # noqa: E402

BUCKET = "ml-api-prod-models-123456789012"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-west-2"}


@pytest.fixture(scope="module")
def s3_endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=free_port())
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-west-2",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    s3.create_bucket(Bucket=BUCKET, CreateBucketConfiguration={"LocationConstraint": "us-west-2"})
    yield endpoint, s3
    server.stop()


@pytest.fixture(scope="module")
def published(bentoml_home, s3_endpoint):
    import bentoml

    _endpoint, s3 = s3_endpoint
    uri = publish("xgb_classifier:latest", BUCKET, "models", s3=s3)
    assert uri.version == bentoml.models.get("xgb_classifier:latest").tag.version
    assert s3.head_object(Bucket=BUCKET, Key=f"models/xgb_classifier/{uri.version}")["ContentLength"] > 1000
    return uri


def empty_home() -> Path:
    home = Path(tempfile.mkdtemp(prefix="xgb-s3-home-"))
    (home / "models").mkdir()
    return home


def s3_env(endpoint: str, home: Path, **variables: str) -> dict[str, str]:
    # boto3 reads AWS_ENDPOINT_URL_S3 itself: the service has no endpoint setting of its own.
    return {**CREDENTIALS, "AWS_ENDPOINT_URL_S3": endpoint, "BENTOML_HOME": str(home), "MODEL_TAG": None, **variables}


def failed_start(env: dict) -> subprocess.CompletedProcess:
    """`bentoml serve` that must stop before it serves: its exit and output."""
    return subprocess.run([BENTOML, "serve", "service:XGBoostService", "--host", "127.0.0.1", "--port", str(free_port())],
                          cwd=REPO, env=environment(env), capture_output=True, text=True, timeout=120)


def error_lines(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.strip() and "Warning" not in line and "warn(" not in line]


def test_a_real_server_serves_the_model_published_to_s3(published, s3_endpoint):
    endpoint, _s3 = s3_endpoint
    home = empty_home()
    server = bentoml_serve(s3_env(endpoint, home, MODEL_URI=str(published)), workers=2, private_bentoml_home=False)
    try:
        server.start(timeout=120)
        metadata = requests.get(f"{server.url}/metadata", timeout=5).json()
        assert published.version in str(metadata), metadata
        example = requests.get(f"{server.url}/schema.json", timeout=5)
        assert example.status_code == 200
        # The model is in this server's own store now, imported once, not per worker.
        assert (home / "models" / "xgb_classifier" / published.version).is_dir()
        assert server.log().count("Error") == 0, server.log()[-2000:]
    finally:
        server.stop()


def test_a_missing_model_object_stops_the_server_with_one_line(published, s3_endpoint):
    endpoint, _s3 = s3_endpoint
    home = empty_home()
    missing = f"s3://{BUCKET}/models/xgb_classifier/doesnotexist0001"
    done = failed_start(s3_env(endpoint, home, MODEL_URI=missing))
    assert done.returncode != 0
    lines = error_lines(done.stdout + done.stderr)
    assert len(lines) == 1 and f"model {missing} does not exist in S3" in lines[0], lines
    assert not (home / "models" / "xgb_classifier").exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_a_corrupt_model_object_stops_the_server_and_leaves_no_half_model(published, s3_endpoint, damage):
    endpoint, s3 = s3_endpoint
    whole = s3.get_object(Bucket=BUCKET, Key=published.key)["Body"].read()
    body = os.urandom(4096) if damage == "garbage" else whole[: len(whole) // 2]
    version = f"corrupt{damage}01"
    s3.put_object(Bucket=BUCKET, Key=f"models/xgb_classifier/{version}", Body=body)
    uri = f"s3://{BUCKET}/models/xgb_classifier/{version}"
    home = empty_home()
    done = failed_start(s3_env(endpoint, home, MODEL_URI=uri))
    assert done.returncode != 0
    lines = error_lines(done.stdout + done.stderr)
    assert len(lines) == 1 and f"model {uri} is corrupt" in lines[0], lines
    assert not list((home / "models").glob("xgb_classifier/*/model.yaml")), "a half-imported model was left in the store"


def test_an_object_holding_another_version_is_refused(published, s3_endpoint):
    """The URI's version is the tag the service will serve: an object copied under another name is refused
    (in a fresh store, by the hook itself) and the model it held is not left in the store."""
    endpoint, s3 = s3_endpoint
    s3.copy_object(Bucket=BUCKET, Key="models/xgb_classifier/renamed0001",
                   CopySource={"Bucket": BUCKET, "Key": published.key})
    home = empty_home()
    env = s3_env(endpoint, home, MODEL_URI=f"s3://{BUCKET}/models/xgb_classifier/renamed0001")
    done = subprocess.run([sys.executable, "-c", "from model_store.source import import_configured_models; "
                           "import_configured_models()"], cwd=REPO, env=environment(env), capture_output=True, text=True)
    assert done.returncode != 0
    assert f"holds {published.tag}, not xgb_classifier:renamed0001" in done.stderr, done.stderr[-2000:]
    assert not list((home / "models").glob("xgb_classifier/*/model.yaml"))


def test_model_uris_that_are_not_a_published_models_are_refused():
    from model_store import ModelContractError

    for bad in ("s3://bucket/models/other_model/v1", "https://bucket/models/xgb_classifier/v1", "s3://b/xgb_classifier/"):
        with pytest.raises(ModelContractError, match="MODEL_URI=.*is not s3://"):
            ModelUri.parse(bad)
    assert ModelUri.parse("s3://my-bucket/models/xgb_classifier/abc123").tag == "xgb_classifier:abc123"


# -- the built Bento, served as the image runs on ECS --------------------------------------------

# A retrain, as `make train` registers one: the default model saved again under a new version in a
# store of its own (not the Bento's), then published as `python -m ops publish-model` does.
_RETRAIN_AND_PUBLISH = """
import sys, types
from model_store import load_bundle, save_bundle
from model_store.source import publish
b = load_bundle(sys.argv[1])
tag = save_bundle(b.booster, types.SimpleNamespace(mean_=b.mean, scale_=b.scale), schema=b.schema,
                  labels={"retrain_of": b.version}, metadata=b.metadata).tag
print(publish(str(tag), sys.argv[2], "models"))
"""


@pytest.fixture(scope="module")
def built_bento(bentoml_home, tmp_path_factory) -> Path:
    """The Bento as the image holds it at $BENTO_PATH: `bentoml build` of this checkout (as
    container/containerize.sh runs it), with its models/ beside it, as `bentoml containerize` copies
    them into the build context and `bentoml export` packs them."""
    import tarfile

    env = environment({"BENTOML_HOME": bentoml_home, "MODEL_TAG": None, "MODEL_URI": None, "CANDIDATE_MODEL_URI": None})
    done = subprocess.run([BENTOML, "build", "-o", "tag"], cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    [tag] = [line.removeprefix("__tag__:") for line in done.stdout.splitlines() if line.startswith("__tag__:")]
    work = tmp_path_factory.mktemp("bento")
    exported = subprocess.run([BENTOML, "export", tag, str(work / "service.bento")], capture_output=True, text=True, timeout=300, env=env)
    assert exported.returncode == 0, exported.stderr[-2000:]
    bento = work / "bento"
    with tarfile.open(work / "service.bento") as archive:
        archive.extractall(bento, filter="data")
    assert (bento / "bento.yaml").is_file() and list((bento / "models" / "xgb_classifier").iterdir()), \
        "the Bento holds its model: BentoML then serves from the Bento's own store"
    return bento


@pytest.fixture(scope="module")
def retrained(bentoml_home, s3_endpoint) -> list[ModelUri]:
    """Two models the Bento does not hold (a new primary and a candidate), published to the moto bucket."""
    import bentoml

    endpoint, _s3 = s3_endpoint
    source = bentoml.models.get("xgb_classifier:latest")
    uris = []
    for _ in range(2):
        home = empty_home()
        shutil.copytree(source.path, home / "models" / "xgb_classifier" / source.tag.version)
        done = subprocess.run([sys.executable, "-c", _RETRAIN_AND_PUBLISH, str(source.tag), BUCKET], cwd=REPO, capture_output=True,
                              text=True, timeout=120, env=environment({**CREDENTIALS, "AWS_ENDPOINT_URL_S3": endpoint, "BENTOML_HOME": str(home)}))
        assert done.returncode == 0, done.stderr[-2000:]
        uris.append(ModelUri.parse(done.stdout.strip().splitlines()[-1]))
        shutil.rmtree(home)
    assert len({u.version for u in uris} | {source.tag.version}) == 3
    return uris


def fargate_like_bento_serve(bento: Path, home: Path, variables: dict[str, str]) -> Server:
    """`bentoml serve $BENTO_PATH` from $BENTO_PATH (the image's entrypoint) with the task definition's
    environment, / and the Bento read-only, /tmp writable, BENTOML_HOME=`home` under /tmp."""
    container = task_container()
    assert container["readonlyRootFilesystem"] is True
    [tmp_volume] = [m["containerPath"] for m in container["mountPoints"]]
    assert container_home(container).startswith(tmp_volume + "/") and str(home).startswith(tmp_volume + "/")
    env = {**{e["name"]: e["value"] for e in container["environment"]}, **CREDENTIALS, "BENTOML_HOME": str(home),
           "XGB_WORKERS": "2", **variables}
    command = ["env", *(f"{k}={v}" for k, v in env.items()), BENTOML, "serve", str(bento), "--host", "127.0.0.1", "--port", "{port}"]
    return Server(read_only_root(command, cwd=bento, writable=[tmp_volume], read_only=[str(bento)]), name="bento-serve-read-only")


def container_home(container: dict) -> str:
    return next(e["value"] for e in container["environment"] if e["name"] == "BENTOML_HOME")


def test_the_built_bento_serves_published_models_from_a_read_only_root(built_bento, retrained, s3_endpoint):
    endpoint, _s3 = s3_endpoint
    primary, candidate = retrained
    home = Path(tempfile.mkdtemp(prefix="xgb-task-home-", dir="/tmp"))  # the task's BENTOML_HOME=/tmp/bentoml
    packed = sorted(p.name for p in (built_bento / "models" / "xgb_classifier").iterdir())
    server = fargate_like_bento_serve(built_bento, home, {"AWS_ENDPOINT_URL_S3": endpoint, "MODEL_URI": str(primary),
                                                          "CANDIDATE_MODEL_URI": str(candidate), "XGB_CANDIDATE_MODE": "shadow"})
    try:
        server.start(timeout=180)
        card = requests.get(f"{server.url}/metadata", timeout=10).json()
        assert card["version"] == primary.version, card
        assert [(m["role"], m["version"]) for m in card["rollout"]["models"]] == [("primary", primary.version), ("candidate", candidate.version)]
        answer = requests.post(f"{server.url}/predict", json=card["example"], timeout=10)
        assert answer.status_code == 200, answer.text
        assert answer.json()["model_version"] == primary.version
        # Imported into the writable home (each once: the arbiter before its workers), the Bento untouched.
        for uri in retrained:
            assert (home / "models" / "xgb_classifier" / uri.version / "model.yaml").is_file()
        assert sorted(p.name for p in (built_bento / "models" / "xgb_classifier").iterdir()) == packed
        assert "Traceback" not in server.log(), server.log_tail()
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)


def test_the_built_bento_stops_with_one_line_when_the_published_model_is_missing(built_bento, s3_endpoint):
    endpoint, _s3 = s3_endpoint
    home = Path(tempfile.mkdtemp(prefix="xgb-task-home-", dir="/tmp"))
    missing = f"s3://{BUCKET}/models/xgb_classifier/doesnotexist0002"
    server = fargate_like_bento_serve(built_bento, home, {"AWS_ENDPOINT_URL_S3": endpoint, "MODEL_URI": missing})
    try:
        server.start(wait=False)
        code = server.proc.wait(120)
        assert code != 0
        lines = error_lines(server.log())
        assert len(lines) == 1 and f"model {missing} does not exist in S3" in lines[0], lines
    finally:
        server.stop()
        shutil.rmtree(home, ignore_errors=True)
