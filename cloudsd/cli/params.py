"""Click parameter types for cloudsd's own kinds of value."""

from __future__ import annotations

from typing import Any

import click

from cloudsd.durations import parse_duration


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


PORT = PortType()
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
