"""manage.py against a database it cannot reach: one line naming it and what to check, exit status 1."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest

from devtools.processes import BIN, base_environ, free_port, run


def manage(tmp_path: Path, *args: str, database_url: str) -> tuple[int, str, str]:
    env = base_environ(tmp_path, DJANGO_ENV="development", DATABASE_URL=database_url)
    result = run([str(BIN / "python"), "manage.py", *args], env=env)
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize("command", [["migrate", "--noinput"], ["reconcile_payments"], ["createsuperuser", "--noinput",
                                                                                        "--username", "admin"]])
def test_an_unreachable_postgresql_is_one_line_naming_it_with_the_password_masked(
    tmp_path: Path, command: list[str]
) -> None:
    port = free_port()  # nothing listens there
    status, out, err = manage(tmp_path, *command, database_url=f"postgres://app:s3cret-pw@127.0.0.1:{port}/coffee")
    assert (status, out) == (1, "")
    assert err.count("\n") == 1 and "Traceback" not in err and "s3cret-pw" not in err, err
    assert err.startswith(f"database error: cannot connect to PostgreSQL at 127.0.0.1:{port}, database 'coffee' as "
                          f"'app' (DATABASE_URL='postgres://app:********@127.0.0.1:{port}/coffee'): ")
    assert "Connection refused" in err and err.rstrip().endswith("and that DATABASE_URL names it")


def test_a_sqlite_file_that_cannot_be_opened_is_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-directory" / "db.sqlite3"
    status, out, err = manage(tmp_path, "migrate", database_url=f"sqlite:///{missing}")
    assert (status, out) == (1, "")
    assert err == (f"database error: cannot open the SQLite database {missing} (DATABASE_URL='sqlite:///{missing}'): "
                   "unable to open database file; check that its directory exists and is writable\n")


@pytest.mark.database
def test_a_wrong_password_is_libpqs_reason_in_the_one_line(tmp_path: Path) -> None:
    url = os.environ.get("DATABASE_URL", "")
    if not url.startswith("postgres"):
        pytest.skip("needs the PostgreSQL pass's server")
    parts = urlsplit(url)
    wrong = parts._replace(netloc=f"no_such_user:wrong-pw@{parts.hostname}:{parts.port}")
    status, out, err = manage(tmp_path, "migrate", database_url=urlunsplit(wrong))
    assert (status, out) == (1, "") and err.count("\n") == 1, err
    assert "as 'no_such_user'" in err and "wrong-pw" not in err and "Traceback" not in err
