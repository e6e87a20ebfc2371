"""Bench options made from a component's settings dataclass, so a setting added there is
an option of every bench that varies it, with the same help, type and choices."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any


def add_settings(parser: argparse.ArgumentParser, settings_type: type, prefix: str = "",
                 skip: tuple[str, ...] = ()) -> None:
    """One `--<prefix><field>` option per field (underscores as dashes), default None: unset
    options leave the field at the value the bench starts from."""
    for f in dataclasses.fields(settings_type):
        if f.name in skip:
            continue
        meta, kind = f.metadata, type(f.default)
        flag = "--" + (prefix + f.name).replace("_", "-")
        extra: dict[str, Any] = {"choices": meta["choices"]} if "choices" in meta else {}
        if kind is bool:
            extra["type"] = lambda text: text.lower() in ("1", "true", "yes", "on")
        else:
            extra["type"] = kind
        parser.add_argument(flag, dest=_dest(prefix, f.name), default=None, help=meta.get("help", ""), **extra)


def given(args: argparse.Namespace, settings_type: type, prefix: str = "") -> dict[str, Any]:
    """The fields of `settings_type` set on the command line, by field name."""
    values = {f.name: getattr(args, _dest(prefix, f.name), None) for f in dataclasses.fields(settings_type)}
    return {name: value for name, value in values.items() if value is not None}


def _dest(prefix: str, name: str) -> str:
    return (prefix + name).replace("-", "_")
