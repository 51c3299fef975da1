"""config/settings.toml holds only what a layer sets otherwise than the declared default."""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from typing import Any

from coffee_payment.conf_declarations import BY_KEY, LAYERS
from devtools.processes import REPO


def leaves(table: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for name, value in table.items():
        if isinstance(value, dict):
            yield from leaves(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def test_every_layer_value_is_a_declared_setting_that_differs_from_its_default() -> None:
    layers = tomllib.loads((REPO / "config" / "settings.toml").read_text())
    assert set(layers) <= set(LAYERS), sorted(set(layers) - set(LAYERS))
    values = [(layer, key, value) for layer, table in layers.items() for key, value in leaves(table)]
    assert [(layer, key) for layer, key, _ in values if key not in BY_KEY] == [], "not a declared setting"
    # A list in TOML is a tuple once read (allowed_hosts).
    assert [(layer, key) for layer, key, value in values
            if (tuple(value) if isinstance(value, list) else value) == BY_KEY[key].default] == [], "the default again"
