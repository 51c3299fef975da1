"""docs/operations.md's backup recipe, run as written against the PostgreSQL pass's cluster: a dump
taken, data lost, the dump restored, the orders back and the schema whole."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from devtools import postgres
from devtools.processes import BIN, REPO, base_environ, run

pytestmark = [pytest.mark.integration, pytest.mark.database, pytest.mark.timeout(180)]

OPERATIONS = REPO / "docs" / "operations.md"


def backup_recipe() -> list[str]:
    """The PostgreSQL commands of the Backups section's code block (the kubectl ones need a cluster)."""
    section = OPERATIONS.read_text().split("### Backups\n", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```sh\n(.*?)```", section, flags=re.DOTALL)
    assert block, "docs/operations.md has no backup recipe"
    commands = [re.sub(r"\s+#\s.*$", "", line) for line in block[1].splitlines()]
    return [command for command in commands if command.startswith(("pg_dump", "pg_restore", "psql"))]


def manage(tmp_path: Path, database_url: str, *args: str) -> str:
    result = run([str(BIN / "python"), "manage.py", *args], env=base_environ(tmp_path, DATABASE_URL=database_url))
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_documented_backup_restores_lost_orders(tmp_path: Path) -> None:
    if not postgres.is_postgres(os.environ.get("DATABASE_URL", "")):
        pytest.skip("the recipe is PostgreSQL's: runs in the PostgreSQL pass")
    recipe = backup_recipe()
    assert [command.split()[0] for command in recipe] == ["pg_dump", "pg_restore", "pg_restore", "psql"]
    dump, verify, restore, check = recipe
    env = {**os.environ, "PATH": f"{postgres.bindir()}{os.pathsep}{os.environ['PATH']}"}

    def shell(command: str, database_url: str) -> str:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", command], cwd=tmp_path, capture_output=True,
                                text=True, timeout=60, env={**env, "DATABASE_URL": database_url})
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        return result.stdout

    with postgres.server_database(tmp_path) as url:
        manage(tmp_path, url, "migrate", "--noinput")
        manage(tmp_path, url, "seed_demo")
        manage(tmp_path, url, "shell", "-c", "from payments import services; services.order_create("
               "order_id='o-backed-up', device_uuid='demo-machine-lobby', drink_number=1, size=1)")
        shell(dump, url)
        shell(verify, url)
        shell("psql \"$DATABASE_URL\" -c 'DELETE FROM payments_order'", url)  # the loss
        shell(restore, url)
        counted = shell(check, url)
        assert re.search(r"^\s*1 \| \d{4}-", counted, flags=re.MULTILINE), counted
        manage(tmp_path, url, "migrate", "--check")
