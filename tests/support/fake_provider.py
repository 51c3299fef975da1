"""The fake payment provider served from a thread of the test process, on a free loopback port."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import uvicorn

from devtools.fake_provider import FakeProvider
from devtools.processes import free_port


@dataclass
class RunningFake:
    app: FakeProvider
    url: str

    @property
    def api_url(self) -> str:
        return self.url + "/v3"


@contextmanager
def fake_provider_thread(**options: Any) -> Iterator[RunningFake]:
    app = FakeProvider(**options)
    port = free_port()
    # A hung request may still be sleeping at the end: give it a second, then drop it.
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on",
                            timeout_graceful_shutdown=1)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="fake-provider", daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while not server.started:
            if time.monotonic() > deadline or not thread.is_alive():
                raise AssertionError("the fake provider did not start within 10 s")
            time.sleep(0.02)
        yield RunningFake(app=app, url=f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        thread.join(timeout=10)
