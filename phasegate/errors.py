"""The one exception hierarchy of phasegate.

Retries and rollback branch on these types, never on message text::

    PhasegateError                    anything phasegate raises on purpose
    ├── PlanError                     the phase plan file is invalid (carries every problem)
    ├── ConfigError                   a Block, lab state or parameter is missing or malformed
    ├── TransientError                safe to retry: nothing changed, or the change is idempotent
    │   ├── SourceUnavailable         a metric or data source did not answer (Prometheus, SQL)
    │   ├── RemoteTimeout             SSH / HTTP / API call timed out
    │   └── CapacityUnavailable       the cloud has no capacity now (Compute stockout)
    ├── PermanentError                retrying the same call cannot help
    │   ├── RemoteCommandFailed       a command on a GPU host exited non-zero
    │   ├── PreconditionFailed        the world is not as required (e.g. too few GPUs)
    │   │   └── TlsVerificationFailed a server's TLS certificate was refused (host, reason)
    │   ├── VerificationFailed        an applied change did not read back as intended
    │   ├── LockLost                  the transition lock's session is gone mid-run
    │   └── TimeLimitExceeded         the run passed the plan's time limit for the step
    ├── SafetyStop                    a guard refused to act; nothing was changed
    │   ├── ApprovalRejected          an approver said no
    │   ├── ApprovalExpired           nobody answered before the approval timeout
    │   ├── TransitionLocked          another transition holds the lock
    │   └── PreflightFailed           a system the step needs does not answer (doctor's checks)
    └── LabError                      the embedded lab could not start, or is not running

`is_retryable(exc)` is the single predicate tasks pass to Prefect's `retry_condition_fn`.
"""

from __future__ import annotations

__all__ = [
    "ApprovalExpired",
    "ApprovalRejected",
    "CapacityUnavailable",
    "ConfigError",
    "LabError",
    "LockLost",
    "PermanentError",
    "PhasegateError",
    "PlanError",
    "PreconditionFailed",
    "PreflightFailed",
    "RemoteCommandFailed",
    "RemoteTimeout",
    "SafetyStop",
    "SourceUnavailable",
    "TimeLimitExceeded",
    "TlsVerificationFailed",
    "TransientError",
    "TransitionLocked",
    "VerificationFailed",
    "is_retryable",
]


class PhasegateError(Exception):
    """Base class of every error phasegate raises on purpose."""


class PlanError(PhasegateError):
    """The phase plan is invalid. `problems` lists every (field, reason) found."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = list(problems)
        lines = [f"{field}: {reason}" for field, reason in self.problems]
        super().__init__("invalid phase plan:\n" + "\n".join(lines))


class ConfigError(PhasegateError):
    """A Block, the lab state or a parameter is missing or malformed."""


class TransientError(PhasegateError):
    """A failure that a retry may cure; the call changed nothing (or is idempotent)."""


class SourceUnavailable(TransientError):
    """A metric or data source (Prometheus, PostgreSQL) did not answer."""


class RemoteTimeout(TransientError):
    """An SSH, HTTP or cloud API call timed out."""


class CapacityUnavailable(TransientError):
    """The cloud has no capacity right now (e.g. ZONE_RESOURCE_POOL_EXHAUSTED)."""


class PermanentError(PhasegateError):
    """A failure that repeating the same call cannot fix."""


class RemoteCommandFailed(PermanentError):
    """A command run on a remote host exited non-zero."""

    def __init__(self, host: str, command: str, exit_status: int, stderr: str) -> None:
        self.host, self.command, self.exit_status, self.stderr = host, command, exit_status, stderr
        super().__init__(f"{host}: `{command}` exited {exit_status}: {stderr.strip()[:500]}")


class PreconditionFailed(PermanentError):
    """The world is not in the state the step needs (e.g. a host has too few GPUs)."""


class TlsVerificationFailed(PreconditionFailed):
    """A server's TLS certificate or handshake was refused (untrusted issuer, hostname
    mismatch, expired, not TLS at all); the message names the host and the reason."""


class VerificationFailed(PermanentError):
    """A change was applied but did not read back as intended."""


class LockLost(PermanentError):
    """The session holding the transition lock is gone (a dropped connection, a failover, an
    idle timeout): another run could take the lock, so this one stops and rolls back."""


class TimeLimitExceeded(PermanentError):
    """The run has used the plan's time limit for this step (`transitions[].time_limit`)."""


class SafetyStop(PhasegateError):
    """A guard refused to act. Nothing was changed."""


class ApprovalRejected(SafetyStop):
    """An approver rejected the transition (a person's "no": the run ends cleanly)."""


class ApprovalExpired(SafetyStop):
    """Nobody answered the approval before its timeout (not a "no": nobody decided; Prefect
    ends a timed-out pause Failed)."""


class TransitionLocked(SafetyStop):
    """Another phase transition holds the lock."""


class PreflightFailed(SafetyStop):
    """The preflight (flows.doctor) found a system the step needs that does not answer, or a
    query of its plan that returns nothing: the run stops before anyone is asked to approve."""


class LabError(PhasegateError):
    """The embedded lab could not start, or is not running."""


def is_retryable(exc: BaseException) -> bool:
    """True when `exc` is a TransientError: the only kind a task may retry."""
    return isinstance(exc, TransientError)
