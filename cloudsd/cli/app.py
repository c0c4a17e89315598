"""The application object: what every command shares, opened once per run and closed when the run ends.

`cli` puts one `App` into Click's `ctx.obj`; commands take it with `@pass_app`. The settings, the ledger
and the providers are opened on first use, so a command that needs none of them (and `--help`) opens none.
"""

from __future__ import annotations

TYPE_CHECKING = False  # `typing` is not imported at run time: `cloudsd status` imports this module
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import Any, TypeVar

    from cloudsd.config import Settings
    from cloudsd.core.machines import Providers
    from cloudsd.ledger import Ledger

    F = TypeVar("F", bound=Callable[..., Any])


class App:
    """Settings, ledger and providers for one run of `cloudsd`."""

    def __init__(self) -> None:
        self._settings: Settings | None = None
        self._ledger: Ledger | None = None
        self._providers: Providers | None = None

    def configure(self, overrides: Mapping[str, Any]) -> Settings:
        """Resolve the settings with the command's flags on top (flag > env > file > default)."""
        from cloudsd.config import resolve

        if self._providers is not None:
            raise RuntimeError("the settings are fixed once the providers are open")
        self._settings = resolve(dict(overrides))
        return self._settings

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            from cloudsd.config import resolve

            self._settings = resolve()
        return self._settings

    @property
    def ledger(self) -> Ledger:
        if self._ledger is None:
            from cloudsd.ledger import Ledger

            self._ledger = Ledger()
        return self._ledger

    @property
    def providers(self) -> Providers:
        if self._providers is None:
            from cloudsd.core.machines import Providers

            self._providers = Providers(self.settings)
        return self._providers

    def close(self) -> None:
        if self._providers is not None:
            self._providers.close()
        if self._ledger is not None:
            self._ledger.close()


def pass_app(func: F) -> F:
    """click's `make_pass_decorator(App, ensure=True)`: the command gets the run's `App` as its first argument.
    click is imported here, not at the top, so `cloudsd status` can open an `App` without it (`main.py`)."""
    from typing import cast  # with click, which imports typing anyway

    import click

    return cast("F", click.make_pass_decorator(App, ensure=True)(func))
