"""`manage.py issue_machine_token <device_uuid>...`: a new machine API token for each machine, printed once.

What the admin's "Issue a new machine API token" action does, for a shell without a browser (a
Kubernetes pod, a provisioning script). A machine's previous token stops working at once. An
unknown machine stops the command before any token is issued.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser
from django.db import transaction

from payments import services
from payments.models import Device


class Command(BaseCommand):
    help = "Issue a new machine API token for each machine named (the old one stops working); print each once."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("device_uuid", nargs="+", help="the machine's deviceUuid, as in its QR codes")

    def handle(self, *args: Any, **options: Any) -> None:
        wanted = list(dict.fromkeys(options["device_uuid"]))
        found = dict(Device.objects.filter(device_uuid__in=wanted).values_list("device_uuid", "pk"))
        unknown = [uuid for uuid in wanted if uuid not in found]
        if unknown:
            raise CommandError(f"no machine {', '.join(repr(uuid[:64]) for uuid in unknown)}: nothing issued "
                               "(create machines in the admin, under Devices)")
        with transaction.atomic():
            issued = [(uuid, services.device_credential_issue(device_id=found[uuid])) for uuid in wanted]
        for uuid, token in issued:
            self.stdout.write(f"device {uuid}: machine API token {token}")
