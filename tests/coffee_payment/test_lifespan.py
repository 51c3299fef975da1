"""The ASGI lifespan wrapper: startup answered, shutdown hooks run, other scopes passed through."""

from __future__ import annotations

from typing import Any

from coffee_payment.lifespan import Lifespan


async def run_lifespan(app: Lifespan) -> list[dict[str, Any]]:
    incoming = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return incoming.pop(0)

    async def send(message: dict[str, Any]) -> None:
        sent.append(dict(message))

    await app({"type": "lifespan"}, receive, send)
    return sent


async def test_startup_and_shutdown_run_the_hooks() -> None:
    calls = []

    async def hook() -> None:
        calls.append("closed")

    sent = await run_lifespan(Lifespan(app=None, on_shutdown=(hook, hook)))  # type: ignore[arg-type]
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert calls == ["closed", "closed"]


async def test_a_failing_hook_does_not_skip_the_others() -> None:
    calls = []

    async def broken() -> None:
        raise RuntimeError("boom")

    async def hook() -> None:
        calls.append("closed")

    sent = await run_lifespan(Lifespan(app=None, on_shutdown=(broken, hook)))  # type: ignore[arg-type]
    assert sent[-1]["type"] == "lifespan.shutdown.failed" and "boom" in sent[-1]["message"]
    assert calls == ["closed"]


async def test_http_goes_to_the_application() -> None:
    seen = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    await Lifespan(app, on_shutdown=())({"type": "http"}, None, None)  # type: ignore[arg-type]
    assert seen == ["http"]
