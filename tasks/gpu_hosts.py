"""GPU hosts over SSH: run commands (argv quoted with shlex), detect GPUs with nvidia-smi."""

from __future__ import annotations

import shlex
from collections.abc import Sequence
from dataclasses import dataclass

import paramiko
from prefect import task

from blocks.systems import GpuHost
from phasegate.errors import PreconditionFailed, RemoteCommandFailed, RemoteTimeout
from policy.gpus import GPU_QUERY_FIELDS, GpuInfo, parse_query_gpu_csv
from tasks.retrying import only_transient

__all__ = ["CommandResult", "detect_gpus", "run_remote"]


@dataclass(frozen=True)
class CommandResult:
    """What a remote command returned."""

    exit_status: int
    stdout: str
    stderr: str


def run_remote(host: GpuHost, argv: Sequence[str], timeout_s: float = 60.0,
               check: bool = True) -> CommandResult:
    """Run `argv` on `host`. Every argument is shell-quoted, so none is ever interpreted.

    Raises RemoteTimeout on connection problems or timeouts (retryable) and
    RemoteCommandFailed when `check` and the command exits non-zero."""
    command = shlex.join(argv)
    client = _connect(host)
    try:
        _, out, err = client.exec_command(command, timeout=timeout_s)
        status = out.channel.recv_exit_status()
        result = CommandResult(status, out.read().decode(), err.read().decode())
    except TimeoutError as exc:
        raise RemoteTimeout(f"{host.name}: `{command}` timed out after {timeout_s}s") from exc
    finally:
        client.close()
    if check and result.exit_status != 0:
        raise RemoteCommandFailed(host.name, command, result.exit_status, result.stderr)
    return result


def _connect(host: GpuHost) -> paramiko.SSHClient:
    """Connect, sorting failures: unreachable is transient, a wrong host key or a refused
    login is not (retrying cannot fix it, and a wrong key may mean a different machine)."""
    where = f"{host.name} ({host.host}:{host.port})"
    try:
        return host.get_client()
    except paramiko.BadHostKeyException as exc:
        raise PreconditionFailed(f"{where}: host key does not match known_hosts") from exc
    except paramiko.AuthenticationException as exc:
        raise PreconditionFailed(f"{where}: SSH login refused: {exc}") from exc
    except paramiko.SSHException as exc:
        raise PreconditionFailed(f"{where}: SSH refused: {exc}") from exc
    except (TimeoutError, OSError) as exc:
        raise RemoteTimeout(f"{where}: cannot connect: {exc}") from exc


@task(retries=2, retry_delay_seconds=[1, 3], retry_condition_fn=only_transient)
def detect_gpus(host: GpuHost) -> list[GpuInfo]:
    """The GPUs `host` reports through nvidia-smi (empty if it has none)."""
    argv = ["nvidia-smi", f"--query-gpu={','.join(GPU_QUERY_FIELDS)}",
            "--format=csv,noheader,nounits"]
    result = run_remote(host, argv, timeout_s=30, check=False)
    if result.exit_status == 6:  # "No devices were found"
        return []
    if result.exit_status != 0:
        raise RemoteCommandFailed(host.name, shlex.join(argv), result.exit_status, result.stderr)
    return parse_query_gpu_csv(result.stdout)
