"""Django's own ASGI handler tests against the project's handler.

    python -m tests.support.django_suite                   # coffee_payment.asgi_handler.LeanASGIHandler
    python -m tests.support.django_suite --handler django  # Django's ASGIHandler: proves the harness

Runs `tests/asgi` and `tests/handlers` from the sdist of the installed Django version
(tests/support/sdists.py: downloaded once into build/). A child process swaps the handler in before
Django's test modules import it (`django.core.handlers.asgi.ASGIHandler`, which they subclass, and
`django.core.asgi.get_asgi_application`), with every test path a lean path
(tests/support/django_suite_settings.py), and runs Django's runtests.py. Exit status: non-zero when
a test fails or errs, or when the handler served no request (the swap did not take).
"""

from __future__ import annotations

import argparse
import os
import runpy
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

from tests.support.sdists import REPO, sdist_tree

LABELS = ("asgi", "handlers")
HANDLERS = {
    "project": "coffee_payment.asgi_handler.LeanASGIHandler",
    "django": "django.core.handlers.asgi.ASGIHandler",
}
SETTINGS = "tests.support.django_suite_settings"


def django_tests_dir(django_version: str) -> Path:
    """tests/ of Django's sdist for `django_version`, downloaded and extracted on first use."""
    return sdist_tree("django", django_version, ("tests/",)) / "tests"


def run_child(handler_path: str, tests_dir: Path, runtests_args: list[str]) -> int:
    """In the child process: swap the handler in, run runtests.py, check that the handler served."""
    sys.path[:0] = [str(tests_dir), str(REPO)]
    os.environ["DJANGO_SETTINGS_MODULE"] = SETTINGS

    import django.core.asgi
    import django.core.handlers.asgi
    from django.utils.module_loading import import_string

    # Django's static files handler stays a subclass of Django's ASGIHandler, as it is in any
    # project; tests/asgi wraps the handler under test in it.
    import django.contrib.staticfiles.handlers  # noqa: F401

    base = import_string(handler_path)
    served: list[str] = []

    class Handler(base):  # type: ignore[misc, valid-type]
        """The handler under test, counting the requests it is given."""

        async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
            served.append(scope.get("path", ""))
            await super().__call__(scope, receive, send)

    def get_asgi_application():  # type: ignore[no-untyped-def]
        django.setup(set_prefix=False)
        return Handler()

    django.core.handlers.asgi.ASGIHandler = Handler
    django.core.asgi.get_asgi_application = get_asgi_application

    sys.argv = [str(tests_dir / "runtests.py"), "--parallel=1", *runtests_args]
    try:
        runpy.run_path(str(tests_dir / "runtests.py"), run_name="__main__")
    except SystemExit as exit_:
        if exit_.code:
            return 1
    if not served:
        print(f"django_suite: {handler_path} served no request: the swap did not take", file=sys.stderr)
        return 1
    print(f"django_suite: {handler_path} served {len(served)} requests of Django's tests", file=sys.stderr)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--handler", choices=sorted(HANDLERS), default="project")
    parser.add_argument("--child", help=argparse.SUPPRESS)  # the tests directory, in the child
    parser.add_argument("runtests_args", nargs="*", help="more arguments for runtests.py (-v 2, -k NAME)")
    options, extra = parser.parse_known_args()
    runtests_args = [*options.runtests_args, *extra]
    if options.child:
        return run_child(HANDLERS[options.handler], Path(options.child), runtests_args)

    django_version = version("django")
    tests_dir = django_tests_dir(django_version)
    print(f"== Django {django_version} tests/asgi and tests/handlers against {HANDLERS[options.handler]} ==",
          flush=True)
    # A fresh interpreter: the swap must come before anything imports Django's handler.
    child = [sys.executable, "-m", "tests.support.django_suite", "--handler", options.handler,
             "--child", str(tests_dir), "--", *LABELS, *runtests_args]
    return subprocess.run(child, cwd=REPO, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
