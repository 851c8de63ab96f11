"""Options every verb that reads a config shares: ``-c/--config`` and repeatable ``--set key.path=value``."""

from __future__ import annotations

import argparse


def add_config(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("-c", "--config", required=required, help="config.json")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config key, e.g. --set train.nb_epochs=5 (repeatable; validated like the file)")  # fmt: skip


def load(args: argparse.Namespace):
    """The config of ``args.config`` with ``args.set`` applied, validated as one."""
    from yolo3.config import load_config, parse_overrides

    return load_config(args.config, parse_overrides(getattr(args, "set", None)))


def positive(name: str, value: int | float | None, minimum: int | float = 1) -> None:
    """A numeric flag below its minimum ends in one message naming the flag."""
    from yolo3.errors import UserError

    if value is not None and value < minimum:
        raise UserError(f"{name} must be at least {minimum}, got {value}")


def in_key_range(name: str, value: int | float | None, key: str) -> None:
    """A flag that sets a config key (``--clusters`` -> ``clustering.clusters``) takes that key's range: one message naming the flag."""
    from yolo3.config import SCHEMA
    from yolo3.errors import UserError

    section, field = key.split(".")
    allowed = SCHEMA[section][field].range
    if value is not None and allowed is not None and value not in allowed:
        raise UserError(f"{name} must be in {allowed} (as {key}), got {value}")


def write_report(path: str | None, report: dict) -> None:
    if path:
        from yolo3.reporting import write_json

        write_json(path, report)
        print(f"wrote {path}")
