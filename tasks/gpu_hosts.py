"""GPU hosts over SSH: run commands (argv quoted with shlex), detect GPUs with nvidia-smi,
manage the vLLM containers with docker (idempotently, in policy.containers' model), wait for
vLLM to be ready."""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import paramiko
from prefect import task

from phasegate.blocks.systems import GpuHost
from phasegate.errors import (
    PreconditionFailed,
    RemoteCommandFailed,
    RemoteTimeout,
    VerificationFailed,
)
from phasegate.policy.containers import Container, LiveContainer, differences
from phasegate.policy.gpus import GPU_QUERY_FIELDS, GpuInfo, parse_query_gpu_csv
from phasegate.tasks.retrying import retried
from phasegate.tasks.vllm import check_completion

__all__ = ["CommandResult", "detect_gpus", "docker_answers", "inspect_container",
           "remove_container", "run_container", "run_remote", "stop_container",
           "wait_vllm_ready"]


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
    if not host.has_host_key():
        raise PreconditionFailed(f"{where}: no known_hosts entry for this host; refusing "
                                 "(host keys are always verified)")
    try:
        return host.get_client()
    except paramiko.BadHostKeyException as exc:
        raise PreconditionFailed(f"{where}: host key does not match known_hosts") from exc
    except paramiko.AuthenticationException as exc:
        raise PreconditionFailed(f"{where}: SSH login refused: {exc}") from exc
    except paramiko.SSHException as exc:
        # Past the host key and the login, an SSH-level failure (banner timeout, "No existing
        # session", a cut handshake) is the network or a stalled sshd: worth the bounded
        # retries. paramiko gives these no types of their own, so they are all transient.
        raise RemoteTimeout(f"{where}: SSH handshake failed: {exc}") from exc
    except (TimeoutError, OSError) as exc:
        raise RemoteTimeout(f"{where}: cannot connect: {exc}") from exc


@retried
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


# ----------------------------------------------------------------------------- containers
# docker over SSH, in the one container model (policy.containers). Each change first reads
# `docker inspect`, so a rerun after a crash (or a retry after a dropped connection)
# converges instead of failing on "name already in use".


def _inspect(host: GpuHost, name: str) -> LiveContainer | None:
    argv = ["docker", "inspect", name]
    result = run_remote(host, argv, timeout_s=30, check=False)
    if result.exit_status != 0:
        if "No such object" in result.stderr or "No such container" in result.stderr:
            return None
        raise RemoteCommandFailed(host.name, shlex.join(argv), result.exit_status,
                                  result.stderr)
    objs = json.loads(result.stdout)
    return Container.from_inspect(host.name, objs[0]) if objs else None


@retried
def inspect_container(host: GpuHost, name: str) -> LiveContainer | None:
    """What container `name` on `host` is and whether it runs (`docker inspect`), or None
    when there is no such container."""
    return _inspect(host, name)


@retried
def run_container(host: GpuHost, wanted: Container) -> dict[str, Any]:
    """Make `wanted` run on `host`.

    Nothing happens when a running container of that name is already the same server
    (policy.containers.differences). A stopped or different one is removed first (`replaced`
    says why). Returns {name, action: unchanged | started | replaced, replaced}. Raises
    VerificationFailed when the container does not read back as asked, RemoteCommandFailed
    when docker refuses (e.g. the port is taken, or the GPUs do not exist)."""
    current = _inspect(host, wanted.name)
    diff = differences(current.container, wanted) if current else []
    if current and current.running and not diff:
        return {"name": wanted.name, "action": "unchanged", "replaced": None}
    replaced = None
    if current:
        replaced = f"differs in {', '.join(diff)}" if diff else "was stopped"
        _remove(host, wanted.name)
    run_remote(host, ["docker", *wanted.run_argv()], timeout_s=120)
    after = _inspect(host, wanted.name)
    if after is None or not after.running or differences(after.container, wanted):
        found = after.to_dict() if after else None
        raise VerificationFailed(f"{host.name}: container {wanted.name} reads back as "
                                 f"{found} after docker run, not as {wanted.to_dict()}")
    return {"name": wanted.name, "action": "replaced" if replaced else "started",
            "replaced": replaced}


@retried
def stop_container(host: GpuHost, name: str, grace_s: int = 10) -> dict[str, Any]:
    """Stop container `name` (SIGTERM, `grace_s` s, then SIGKILL) if it runs.

    Returns {name, action: stopped | already-stopped | absent}; raises VerificationFailed
    when it still runs afterwards."""
    current = _inspect(host, name)
    if current is None:
        return {"name": name, "action": "absent"}
    if not current.running:
        return {"name": name, "action": "already-stopped"}
    run_remote(host, ["docker", "stop", "-t", str(grace_s), name], timeout_s=grace_s + 60)
    after = _inspect(host, name)
    if after is not None and after.running:
        raise VerificationFailed(f"{host.name}: container {name} still runs after docker stop")
    return {"name": name, "action": "stopped"}


def _remove(host: GpuHost, name: str) -> bool:
    """`docker rm -f NAME`; False when there was no such container (already removed)."""
    argv = ["docker", "rm", "-f", name]
    result = run_remote(host, argv, timeout_s=60, check=False)
    if result.exit_status != 0:
        if "No such container" in result.stderr:
            return False
        raise RemoteCommandFailed(host.name, shlex.join(argv), result.exit_status, result.stderr)
    return True


@retried
def remove_container(host: GpuHost, name: str) -> dict[str, Any]:
    """Remove container `name` (killing it if it runs); a missing container is success.

    Returns {name, action: removed | absent}; raises VerificationFailed if it is still there."""
    removed = _remove(host, name)
    if _inspect(host, name) is not None:
        raise VerificationFailed(f"{host.name}: container {name} still exists after docker rm")
    return {"name": name, "action": "removed" if removed else "absent"}


# ----------------------------------------------------------------------------- vLLM readiness


def _health_status(url: str, timeout_s: float) -> str:
    """GET /health's status code, or the transport error's name (what the last poll saw)."""
    try:
        return str(httpx.get(f"{url}/health", timeout=timeout_s).status_code)
    except httpx.HTTPError as exc:
        return type(exc).__name__


# Not retried: the caller's timeout_s is the whole budget; a retry would silently double it.
@task(retries=0)
def wait_vllm_ready(url: str, model: str, timeout_s: float = 300.0,
                    interval_s: float = 2.0) -> dict[str, Any]:
    """Poll GET `url`/health every `interval_s` until it answers 200, for at most `timeout_s`,
    then require a real completion from `model` (tasks.vllm.check_completion).

    Returns {url, waited_s, polls, completion}. Raises RemoteTimeout with the last status
    seen when /health never answers 200 in time; VerificationFailed when the completion fails.
    """
    started = time.monotonic()
    deadline, polls, status = started + timeout_s, 0, "not polled"
    while True:
        polls += 1
        status = _health_status(url, min(5.0, max(0.5, deadline - time.monotonic())))
        if status == "200":
            break
        if time.monotonic() + interval_s > deadline:
            raise RemoteTimeout(f"vLLM {url} not healthy after {timeout_s:g}s ({polls} polls): "
                                f"last /health status {status}")
        time.sleep(interval_s)  # the polling interval, bounded by the deadline above
    remaining = max(5.0, deadline - time.monotonic())
    check = check_completion.fn(url, model, timeout_s=remaining)
    return {"url": url, "waited_s": round(time.monotonic() - started, 3), "polls": polls,
            "completion": asdict(check)}


def docker_answers(host: GpuHost, timeout_s: float) -> str:
    """The preflight's docker probe: `docker ps -a` answers over SSH (the host key verified);
    returns the containers it lists. Raises RemoteCommandFailed or RemoteTimeout."""
    names = run_remote(host, ["docker", "ps", "-a", "--format", "{{.Names}}"],
                       timeout_s=timeout_s).stdout.split()
    return f"docker answers; containers: {', '.join(names) or 'none'}"
