"""Django's application, plus `/gc-report`: what this worker's garbage collector tracks, as JSON.

For the test of config/gunicorn.py's pre_fork hook (gc.freeze): the objects the preloading
master created are frozen, so a worker's full collections do not walk them.
"""

import gc
import json

from coffee_payment.asgi import application as django_application


async def application(scope, receive, send):
    if scope["type"] == "http" and scope["path"] == "/gc-report":
        body = json.dumps({"frozen": gc.get_freeze_count(), "tracked": len(gc.get_objects())}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": body})
        return
    await django_application(scope, receive, send)
