"""The pages served from memory: / (the docs page) and its files, /docs.json (OpenAPI), /metadata
(the model card), /schema.json (what BentoML's clients read).

All are built once at start-up and answered to GET only. With XGB_API_KEY set the model card needs
the key, like the prediction routes: it names the training data, its metrics and the library
versions. The docs page and the contract stay readable.
"""

from __future__ import annotations

from typing import Any, Callable

import orjson

from . import docs_page, openapi
from .contract import Contract
from .errors import API_KEY_CHALLENGE, InputError, not_allowed, respond
from .settings import Settings


class Pages:
    def __init__(self, contract: Contract, settings: Settings, card: dict[str, Any], client_schema: dict[str, Any],
                 check_api_key: Callable[[dict[bytes, bytes]], None]) -> None:  # fmt: skip
        versions = [model["version"] for model in card["rollout"]["models"]]
        self.by_path = docs_page.pages(openapi.build(contract, settings, versions))  # /, its files, /docs.json
        self.by_path["/metadata"] = docs_page.Page(b"application/json", orjson.dumps(card), keyed=True)  # serving/model_card.py
        self.by_path["/schema.json"] = docs_page.Page(b"application/json", orjson.dumps(client_schema))  # serving/client_api.py
        self.check_api_key = check_api_key

    def __contains__(self, path: str) -> bool:
        return path in self.by_path

    async def serve(self, scope: dict[str, Any], send: Callable) -> None:
        """Answer a request for one of the pages (its path is one of them)."""
        page = self.by_path[scope["path"]]
        if scope["method"] != "GET":
            return await respond(send, 405, not_allowed(scope).body(), [(b"allow", b"GET")])
        request_headers = dict(scope["headers"])
        if page.keyed:
            try:
                self.check_api_key(request_headers)
            except InputError as exc:
                return await respond(send, exc.status, exc.body(), [API_KEY_CHALLENGE])
        body, headers = page.response_for(request_headers.get(b"accept-encoding", b""))
        await respond(send, 200, body, headers, page.content_type, page.cache_control)
