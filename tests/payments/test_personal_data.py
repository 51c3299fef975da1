"""The receipt contact, personal data: masked for staff, scrubbed out of texts bound for a log."""

from __future__ import annotations

import pytest

from payments.personal_data import contact_mask, personal_data_scrub


@pytest.mark.parametrize(("contact", "masked"), [
    ("ivan.petrov@example.ru", "i***@e***.ru"),
    ("a@localhost", "a***@l***"),
    ("79001234567", "+7********67"),
    ("", ""),
])
def test_a_contact_is_masked_to_its_first_and_last_signs(contact: str, masked: str) -> None:
    assert contact_mask(contact) == masked


def test_a_text_loses_its_emails_and_phone_numbers_but_keeps_ids_and_amounts() -> None:
    text = ('{"type": "error", "id": "2e9d6f1a-0000-5000-8000-1b2c3d4e5f60", "parameter": "receipt.customer", '
            '"description": "ivan@mail.ru, +7 (900) 123-45-67 or 79001234567: 120.00 for 20250317110122659ba6d7-9ace"}')
    scrubbed = personal_data_scrub(text)
    assert "ivan@mail.ru" not in scrubbed and "123-45-67" not in scrubbed and "79001234567" not in scrubbed
    assert scrubbed.count("<phone>") == 2 and "<email>" in scrubbed
    for kept in ("2e9d6f1a-0000-5000-8000-1b2c3d4e5f60", "receipt.customer", "120.00", "20250317110122659ba6d7-9ace"):
        assert kept in scrubbed
