"""`manage.py issue_machine_token`: machine tokens without the admin, as in a Kubernetes pod."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.core.management import CommandError, call_command

from payments import credentials
from payments.models import Device, DeviceCredential

pytestmark = pytest.mark.django_db


def issue(*device_uuids: str) -> dict[str, str]:
    out = StringIO()
    call_command("issue_machine_token", *device_uuids, stdout=out)
    return dict(re.findall(r"^device (\S+): machine API token (\S+)$", out.getvalue(), flags=re.MULTILINE))


def test_each_machine_gets_a_token_that_authenticates_and_retires_the_old_one(device: Device) -> None:
    other = Device.objects.create(device_uuid="machine-2", merchant=device.merchant, location="Hall")
    first = issue("machine-1", "machine-2", "machine-1")
    assert set(first) == {"machine-1", "machine-2"}
    again = issue("machine-1")["machine-1"]
    stored = DeviceCredential.objects.get(device=device)
    assert credentials.token_matches(again, stored.token_sha256)
    assert not credentials.token_matches(first["machine-1"], stored.token_sha256)
    assert credentials.token_matches(first["machine-2"], DeviceCredential.objects.get(device=other).token_sha256)


def test_an_unknown_machine_is_named_and_nothing_is_issued(device: Device) -> None:
    with pytest.raises(CommandError, match=r"^no machine 'machine-9': nothing issued"):
        issue("machine-1", "machine-9")
    assert not DeviceCredential.objects.exists()
