"""Django's async test client connecting from a chosen address (the ASGI scope's `client`, which
becomes REMOTE_ADDR): Django's own client always connects from 127.0.0.1."""

from __future__ import annotations

from typing import Any

from django.test import AsyncClient


class ClientAt(AsyncClient):
    def __init__(self, address: str, **defaults: Any) -> None:
        super().__init__(**defaults)
        self.address = address

    def _base_scope(self, **request: Any) -> dict[str, Any]:
        return {**super()._base_scope(**request), "client": [self.address, 40000]}
