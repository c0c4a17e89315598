"""Click parameter types for cloudsd's own kinds of value."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from cloudsd import values
from cloudsd.durations import parse_duration
from cloudsd.names import name_problem


class PortType(click.ParamType):
    name = "port"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        try:
            port = int(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a port number", param, ctx)
        if not 1 <= port <= 65535:
            self.fail(f"{port} is not a port from 1 to 65535", param, ctx)
        return port


class DurationType(click.ParamType):
    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(f"{value!r}: {exc}", param, ctx)


class MachineNameType(click.ParamType):
    """A machine name as `cloudsd.names` accepts it, refused with the rule before anything is written."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        problem = name_problem(str(value))
        if problem:
            self.fail(problem, param, ctx)
        return str(value)


class Checked(click.ParamType):
    """A value checked by one of `cloudsd.values`' rules; a refusal names the flag and what is accepted."""

    def __init__(self, name: str, check: Callable[[Any], Any]) -> None:
        self.name = name
        self.check = check

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return self.check(value)
        except ValueError as exc:
            self.fail(f"{value!r}: {exc}", param, ctx)


def _positive_duration(value: Any) -> float:
    seconds = parse_duration(value)
    if seconds <= 0:
        raise ValueError("expected a duration above zero, e.g. 30m")
    return seconds


PORT = PortType()
DISK_GB = Checked("gb", values.disk_gb)
PRICE = Checked("usd/h", values.price)
SPEND = Checked("usd", values.spend)
VRAM_GB = Checked("gb", values.vram_gb)
FRACTION = Checked("0-1", values.fraction)
CUDA = Checked("version", values.cuda)
LIMIT = click.IntRange(1, 1000)
POSITIVE_DURATION = Checked("duration", _positive_duration)
MACHINE_NAME = MachineNameType()
DURATION = DurationType()


class ProviderChoice(click.Choice):
    """A provider's name, from the registry (plus `extra` words such as "auto"), read when the flag is parsed."""

    def __init__(self, extra: tuple[str, ...] = ()) -> None:
        self.extra = extra
        super().__init__([])

    @property  # type: ignore[override]
    def choices(self) -> list[str]:
        from cloudsd.providers import provider_names

        return [*provider_names(), *self.extra]

    @choices.setter
    def choices(self, _value: Any) -> None:
        pass
