"""Click parameter types for cloudsd's own kinds of value."""

from __future__ import annotations

from typing import Any

import click

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


PORT = PortType()
MACHINE_NAME = MachineNameType()
DURATION = DurationType()
