"""Which BentoML model store a model is looked up in, and where published models are imported.

`bentoml serve` of a built Bento that holds models (the image serves /home/bentoml/bento) makes the
Bento's own models/ directory the store of the whole process, arbiter and workers alike
(bentoml/_internal/service/loader.py, _load_bento); on ECS that directory is on the task's
read-only root filesystem. So a model published to S3 (model_store/source.py) is imported into the
home store, $BENTOML_HOME/models (/tmp/bentoml/models on ECS, the task's writable volume), and a
tag the serving store does not hold is looked up there. Serving from source, both are one store.

| reach (bentoml 1.4.40)                          | used by                       | checked at start (home_store)            | public fallback |
|-------------------------------------------------|-------------------------------|------------------------------------------|-----------------|
| bentoml._internal.models.ModelStore(path), passed as the `_model_store=` argument of bentoml.models.get / import_model / delete | get(), source.import_model() | home_store(): opens $BENTOML_HOME/models and lists it (when it exists) | the serving store (bentoml.models' defaults), logged: right when serving from source; serving a Bento, importing into it fails with "the model store is not writable" |
"""

from __future__ import annotations

import functools
import logging
import os
from typing import Any

logger = logging.getLogger("xgb_service")


def home_path() -> str:
    """$BENTOML_HOME/models, BentoML's default ~/bentoml/models without it: where imports go."""
    return os.path.join(os.path.expanduser(os.environ.get("BENTOML_HOME") or "~/bentoml"), "models")


@functools.lru_cache(maxsize=None)
def _home_store(path: str) -> Any:
    try:
        from bentoml._internal.models import ModelStore

        store = ModelStore(path)
        if os.path.isdir(path):  # (a store not made yet is made by the first import)
            store.list()  # the reach works: it reads the directory it was given
        return store
    except Exception as exc:  # a BentoML whose internals moved: any error is the check failing
        logger.warning("cannot open the model store %s as BentoML's ModelStore (%s: %s): importing into and "
                       "reading from the serving store (update model_store/stores.py)", path, type(exc).__name__, exc)
        return None


def home_store() -> Any:
    """The home store (bentoml._internal.models.ModelStore), or None to use the serving store."""
    return _home_store(home_path())


def home_store_argument() -> dict[str, Any]:
    """The keyword that points bentoml.models.import_model / delete / get at the home store."""
    store = home_store()
    return {} if store is None else {"_model_store": store}


def get(tag: str) -> Any:
    """The stored model (bentoml.Model) for `tag`: from the serving store, else from the home store.

    Raises bentoml.exceptions.NotFound when neither holds it.
    """
    import bentoml

    try:
        return bentoml.models.get(tag)
    except bentoml.exceptions.NotFound:
        if home_store() is None:
            raise
        return bentoml.models.get(tag, **home_store_argument())


def holds(tag: str) -> bool:
    import bentoml

    try:
        get(tag)
    except bentoml.exceptions.NotFound:
        return False
    return True
