"""Models published to S3, imported into the BentoML store when the service starts.

    MODEL_URI=s3://<bucket>/<prefix>/xgb_classifier/<version>            the primary model
    CANDIDATE_MODEL_URI=s3://<bucket>/<prefix>/xgb_classifier/<version>  the shadow/canary candidate

Each names one S3 object holding the model in `bentoml models export` format (what
`python -m ops publish-model` uploads). At start it is downloaded and imported into the home store,
$BENTOML_HOME/models (`bentoml models import`; model_store/stores.py: serving a built Bento, BentoML
reads the Bento's own read-only store, so the import goes to the writable home and the lookup follows
it), and MODEL_TAG / XGB_CANDIDATE_TAG are set to its tag, so the service then resolves and checks it
exactly as a model trained into the store (model_store/bundle.py). A model already in a store under
that tag is not downloaded again: the arbiter imports it before it starts workers, the workers find
it. The S3 endpoint is boto3's: AWS_ENDPOINT_URL_S3 (or AWS_ENDPOINT_URL) points it elsewhere.

A missing, unreadable or corrupt object is one ModelContractError line naming the URI; nothing is
left in the store from a failed import, so a half-imported model is never served.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from dataclasses import dataclass

from . import stores
from .bundle import MODEL_NAME, MODEL_TAG_ENV, ModelContractError

MODEL_URI_ENV = "MODEL_URI"
CANDIDATE_URI_ENV = "CANDIDATE_MODEL_URI"
CANDIDATE_TAG_ENV = "XGB_CANDIDATE_TAG"  # serving/settings.py's candidate_tag
EXPORT_SUFFIX = ".bentomodel"
PUBLISH_HINT = "publish it with `python -m ops publish-model [TAG]`"
_URI = re.compile(r"s3://(?P<bucket>[a-z0-9][a-z0-9.\-]{1,61}[a-z0-9])/(?P<key>(?:[^\s]+/)?"
                  rf"{MODEL_NAME}/(?P<version>[A-Za-z0-9_.\-]+))")


@dataclass(frozen=True)
class ModelUri:
    bucket: str
    key: str
    version: str

    @classmethod
    def parse(cls, uri: str, variable: str = MODEL_URI_ENV) -> "ModelUri":
        match = _URI.fullmatch(uri.strip())
        if not match:
            raise ModelContractError(f"{variable}={uri!r} is not s3://<bucket>/<prefix>/{MODEL_NAME}/<version>; {PUBLISH_HINT}")
        return cls(match["bucket"], match["key"], match["version"])

    @property
    def tag(self) -> str:
        return f"{MODEL_NAME}:{self.version}"

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.key}"


def uri_for(bucket: str, prefix: str, version: str) -> ModelUri:
    return ModelUri(bucket, f"{prefix.strip('/')}/{MODEL_NAME}/{version}", version)


def s3_client():
    import boto3

    return boto3.client("s3")


def _forget(tag: str) -> None:
    """Remove whatever a failed import left under `tag` in the home store."""
    import bentoml

    try:
        bentoml.models.delete(tag, **stores.home_store_argument())
    except bentoml.exceptions.NotFound:
        pass


def _download(s3, uri: ModelUri, path: str) -> None:
    import botocore.exceptions

    try:
        s3.download_file(uri.bucket, uri.key, path)
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NoSuchBucket"):
            raise ModelContractError(f"model {uri} does not exist in S3; {PUBLISH_HINT}") from None
        if code in ("403", "AccessDenied"):
            raise ModelContractError(f"model {uri}: S3 denied reading it ({code}); the task role reads "
                                     f"s3://<modelBucket>/models/{MODEL_NAME}/* only") from None
        raise ModelContractError(f"model {uri}: S3 {code or exc}") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise ModelContractError(f"model {uri}: cannot read it from S3 ({type(exc).__name__}: {exc})") from None


def _unwritable(exc: Exception) -> bool:
    """A failure of the store rather than of the archive (a read-only filesystem, permissions)."""
    return isinstance(exc, PermissionError) or (isinstance(exc, OSError) and exc.errno == 30) or \
        type(exc).__name__ in ("ResourceReadOnly", "PermissionDenied")


def import_model(uri: ModelUri, s3=None) -> str:
    """Download `uri` and import it into the home store (unless a store holds its tag); returns the tag."""
    import bentoml

    if stores.holds(uri.tag):
        return uri.tag
    directory = tempfile.mkdtemp(prefix="model-source-")
    try:
        path = os.path.join(directory, uri.version + EXPORT_SUFFIX)
        _download(s3 or s3_client(), uri, path)
        try:
            model = bentoml.models.import_model(path, **stores.home_store_argument())
        except Exception as exc:  # tarfile, fs and BentoML errors alike mean "not an exported model"
            if _unwritable(exc):
                raise ModelContractError(f"cannot import {uri}: the model store is not writable "
                                         f"({type(exc).__name__}: {exc}); give the service a writable BENTOML_HOME") from None
            _forget(uri.tag)
            detail = str(exc).splitlines()[0][:200] if str(exc) else ""
            raise ModelContractError(f"model {uri} is corrupt: not a `bentoml models export` archive "
                                     f"({type(exc).__name__}: {detail}); {PUBLISH_HINT}") from None
        if str(model.tag) != uri.tag:
            bentoml.models.delete(model.tag, **stores.home_store_argument())
            raise ModelContractError(f"model {uri} holds {model.tag}, not {uri.tag}; {PUBLISH_HINT}")
        return uri.tag
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def import_configured_models(environ=os.environ, s3=None) -> list[str]:
    """The hook the service calls before it resolves its models: import MODEL_URI and
    CANDIDATE_MODEL_URI and point MODEL_TAG / XGB_CANDIDATE_TAG at them. Returns the tags imported."""
    tags = []
    for uri_variable, tag_variable in ((MODEL_URI_ENV, MODEL_TAG_ENV), (CANDIDATE_URI_ENV, CANDIDATE_TAG_ENV)):
        value = environ.get(uri_variable, "").strip()
        if not value:
            continue
        tag = import_model(ModelUri.parse(value, uri_variable), s3)
        environ[tag_variable] = tag
        tags.append(tag)
    return tags


def publish(tag: str, bucket: str, prefix: str = "models", s3=None) -> ModelUri:
    """`bentoml models export` the stored `tag` and upload it; returns its URI."""
    import bentoml

    try:
        model = stores.get(tag)
    except bentoml.exceptions.NotFound:
        raise ModelContractError(f"model {tag!r} is not in the BentoML store; run `make train`") from None
    uri = uri_for(bucket, prefix, model.tag.version)
    directory = tempfile.mkdtemp(prefix="model-publish-")
    try:
        path = bentoml.models.export_model(str(model.tag), os.path.join(directory, uri.version + EXPORT_SUFFIX))
        (s3 or s3_client()).upload_file(path, uri.bucket, uri.key)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    return uri
