"""One error tree for everything a user can cause or meet; the CLI turns it into one line and an exit code.

Core code raises these and never imports click. Each message says what happened and what to do next.
"""

from __future__ import annotations


class CloudsdError(Exception):
    """Base of every error cloudsd reports to the user as one line (no traceback)."""

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message} {self.hint}" if self.hint else self.message


class ConfigError(CloudsdError):
    """A malformed or invalid config file, flag or environment value."""

    exit_code = 2


class CredentialsError(CloudsdError):
    """A provider key is missing or rejected."""

    exit_code = 3


class ProviderError(CloudsdError):
    """The provider's API failed or answered something we cannot use."""

    exit_code = 4


class RateLimited(ProviderError):
    """The provider kept answering 429 past the deadline."""


class NoCapacity(ProviderError):
    """No offer fits, or the chosen offer is gone (try the next one)."""

    exit_code = 5


class ResumeRefused(NoCapacity):
    """The provider cannot start a stopped machine again (its host's GPU is rented out); the disk is kept."""


class ProvisioningError(CloudsdError):
    """A machine was created but did not become usable in time."""

    exit_code = 6


class EngineUnavailable(ProviderError):
    """The local Docker engine is not running or not reachable."""


class ImageMissing(ProviderError):
    """The image is not on the engine and cannot be pulled."""


class SSHError(CloudsdError):
    """SSH could not connect, authenticate, or lost the connection."""

    exit_code = 7


class HostKeyMismatch(SSHError):
    """The machine presented a host key other than the one pinned on first connect."""


class TunnelError(SSHError):
    """The local port forward failed."""


class SyncError(CloudsdError):
    """Moving models or outputs failed; nothing half-written is left in place."""

    exit_code = 8
    problems: list[str] = []  # noqa: RUF012 - each file that could not be moved, when known (set per instance)


class LedgerError(CloudsdError):
    """The ledger cannot be written (a full disk, a read-only home) or read."""

    exit_code = 12


class MachineNotFound(CloudsdError):
    """No machine of that name in the ledger."""

    exit_code = 9


class BudgetError(CloudsdError):
    """A budget is invalid or already exceeded."""

    exit_code = 10


class ImageBuildError(CloudsdError):
    """Building or pushing one of cloudsd's images failed."""

    exit_code = 11
