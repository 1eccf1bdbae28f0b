"""GPU hosts over SSH: run commands (argv quoted with shlex), detect GPUs with nvidia-smi,
manage the vLLM containers with docker (idempotently), wait for vLLM to be ready."""

from __future__ import annotations

import csv
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
from phasegate.policy.gpus import GPU_QUERY_FIELDS, GpuInfo, parse_query_gpu_csv
from phasegate.tasks.retrying import only_transient
from phasegate.tasks.vllm import check_completion

__all__ = ["CommandResult", "container_spec", "detect_gpus", "parse_run_argv",
           "remove_container", "run_argv_from_spec", "run_container", "run_remote",
           "stop_container", "wait_vllm_ready"]


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


# ----------------------------------------------------------------------------- containers
# docker over SSH. Each change first reads `docker inspect`, so a rerun after a crash (or a
# retry after a dropped connection) converges instead of failing on "name already in use".

_RUN_VALUED = {"--name", "--gpus", "--restart", "-p", "--publish", "-v", "--volume", "-e",
               "--env", "--ipc", "--shm-size", "--runtime", "--network", "--entrypoint"}
_COMPARED = ("image", "args", "gpus", "host_port", "ipc")
# Docker's own IPC modes: a container started without --ipc reads back as one of these.
_DEFAULT_IPC = frozenset({"", "private", "shareable"})


Gpus = list[int] | list[str] | str | None


def _gpus(count: int | None, ids: Sequence[str] | None) -> Gpus:
    """One form for a GPU request from `--gpus` or from inspect's DeviceRequests: device
    indices (UUIDs kept as text), "all", "count=N", or None (no GPUs)."""
    if ids:
        return [int(i) for i in ids] if all(i.isdigit() for i in ids) else list(ids)
    if count == -1:
        return "all"
    return f"count={count}" if count else None


def _parse_gpus_flag(value: str) -> Gpus:
    """`--gpus` as docker reads it (a CSV field list: `all`, `2`, `"device=0,1"`)."""
    count: int | None = None
    ids: list[str] | None = None
    for field in next(csv.reader([value]), []):
        key, eq, val = field.partition("=")
        if key == "device":
            ids = [v.strip() for v in val.split(",") if v.strip()]
        elif key in ("all", "count") and (not eq or val == "all"):
            count = -1
        elif (key.isdigit() and not eq) or (key == "count" and val.isdigit()):
            count = int(key if not eq else val)
    return _gpus(count, ids)


def parse_run_argv(argv: Sequence[str]) -> dict[str, Any]:
    """The compared fields {name, image, args, gpus, host_port, ipc} of a `docker run ...` argv
    (without the leading `docker`). Raises ValueError when it has no --name or image."""
    items = list(argv[1:] if argv[:1] == ["run"] else argv)
    opts: dict[str, str] = {}
    i = 0
    while i < len(items) and items[i].startswith("-"):
        key, eq, value = items[i].partition("=")
        if key in _RUN_VALUED and not eq:
            i += 1
            value = items[i] if i < len(items) else ""
        if key in _RUN_VALUED:
            opts.setdefault({"--publish": "-p"}.get(key, key), value)  # the first -p is vLLM's
        i += 1
    if i >= len(items) or "--name" not in opts:
        raise ValueError(f"docker run argv needs --name and an image: {shlex.join(argv)}")
    port = opts.get("-p", "").split("/")[0].split(":")
    host_port = int(port[-2]) if len(port) >= 2 and port[-2].isdigit() else None
    return {"name": opts["--name"], "image": items[i], "args": items[i + 1:],
            "gpus": _parse_gpus_flag(opts["--gpus"]) if "--gpus" in opts else None,
            "host_port": host_port, "ipc": _ipc(opts.get("--ipc"))}


def _ipc(mode: str | None) -> str | None:
    """A non-default IPC mode ("host": vLLM's tensor-parallel workers share memory), or None."""
    return None if mode is None or mode in _DEFAULT_IPC else mode


def _spec_from_inspect(obj: dict[str, Any]) -> dict[str, Any]:
    """{name, image, args, gpus, host_port, ipc, running, restart, volumes} of one inspect
    object."""
    host_cfg = obj.get("HostConfig") or {}
    bindings = host_cfg.get("PortBindings") or {}
    binding = bindings.get("8000/tcp") or next(iter(bindings.values()), None) or [{}]
    port = str(binding[0].get("HostPort") or "")
    requests = host_cfg.get("DeviceRequests") or []
    gpus = _gpus(requests[0].get("Count"), requests[0].get("DeviceIDs")) if requests else None
    return {"name": str(obj.get("Name", "")).lstrip("/"), "image": obj["Config"]["Image"],
            "args": list(obj["Config"].get("Cmd") or []), "gpus": gpus,
            "host_port": int(port) if port.isdigit() else None,
            "ipc": _ipc(host_cfg.get("IpcMode")),
            "running": bool(obj["State"]["Running"]),
            "restart": (host_cfg.get("RestartPolicy") or {}).get("Name") or "no",
            "volumes": list(host_cfg.get("Binds") or [])}


def _inspect(host: GpuHost, name: str) -> dict[str, Any] | None:
    result = run_remote(host, ["docker", "inspect", name], timeout_s=30, check=False)
    if result.exit_status != 0:
        if "No such object" in result.stderr or "No such container" in result.stderr:
            return None
        raise RemoteCommandFailed(host.name, shlex.join(["docker", "inspect", name]),
                                  result.exit_status, result.stderr)
    objs = json.loads(result.stdout)
    return {"host": host.name, **_spec_from_inspect(objs[0])} if objs else None


@task(retries=2, retry_delay_seconds=[1, 3], retry_condition_fn=only_transient)
def container_spec(host: GpuHost, name: str) -> dict[str, Any] | None:
    """What container `name` on `host` is (from `docker inspect`): {host (the Block's name),
    name, image, args, gpus, host_port, ipc, running, restart, volumes}, or None when no such
    container exists.

    `gpus` is a list of device indices, or "all" / "count=N" when the container was started
    that way (inspect cannot say which devices those were), or None. `run_argv_from_spec`
    turns the result back into the `docker run` argv."""
    return _inspect(host, name)


def run_argv_from_spec(spec: dict[str, Any]) -> list[str]:
    """A `docker run` argv (after `docker`) that recreates a container from its spec, e.g. a
    snapshot taken by `container_spec` (restores the vLLM server on rollback)."""
    gpus = spec.get("gpus")
    argv = ["run", "-d", "--name", spec["name"]]
    if gpus is not None:
        argv += ["--gpus", f'"device={",".join(map(str, gpus))}"' if isinstance(gpus, list)
                 else str(gpus)]
    argv += ["--restart", spec.get("restart") or "no"]
    if spec.get("ipc"):
        argv += ["--ipc", spec["ipc"]]
    if spec.get("host_port"):
        argv += ["-p", f"{spec['host_port']}:8000"]
    for bind in spec.get("volumes") or []:
        argv += ["-v", bind]
    return [*argv, spec["image"], *spec["args"]]


def _differences(current: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    return [k for k in _COMPARED if current.get(k) != wanted.get(k)]


@task(retries=2, retry_delay_seconds=[1, 3], retry_condition_fn=only_transient)
def container_matches(host: GpuHost, argv: Sequence[str]) -> bool:
    """True when the container that `docker <argv>` describes already runs exactly so (same
    image, args, GPUs, port, IPC): a resumed transition leaves it serving."""
    wanted = parse_run_argv(argv)
    current = _inspect(host, wanted["name"])
    return bool(current and current["running"] and not _differences(current, wanted))


@task(retries=2, retry_delay_seconds=[1, 3], retry_condition_fn=only_transient)
def run_container(host: GpuHost, argv: Sequence[str]) -> dict[str, Any]:
    """Make the container that `docker <argv>` (a `run -d --name N ...` argv) describes run.

    Nothing happens when a running container of that name already has the same image, args,
    GPUs and host port. A stopped or different one is removed first (`replaced` says why).
    Returns {name, action: unchanged | started | replaced, replaced, spec}. Raises
    VerificationFailed when the container does not read back as asked, RemoteCommandFailed
    when docker refuses (e.g. the port is taken, or the GPUs do not exist)."""
    wanted = parse_run_argv(argv)
    current = _inspect(host, wanted["name"])
    diff = _differences(current, wanted) if current else []
    if current and current["running"] and not diff:
        return {"name": wanted["name"], "action": "unchanged", "replaced": None,
                "spec": current}
    replaced = None
    if current:
        replaced = f"differs in {', '.join(diff)}" if diff else "was stopped"
        _remove(host, wanted["name"])
    run_remote(host, ["docker", *argv], timeout_s=120)
    after = _inspect(host, wanted["name"])
    if after is None or not after["running"] or _differences(after, wanted):
        raise VerificationFailed(f"{host.name}: container {wanted['name']} reads back as "
                                 f"{after} after docker run, not as {wanted}")
    return {"name": wanted["name"], "action": "replaced" if replaced else "started",
            "replaced": replaced, "spec": after}


@task(retries=2, retry_delay_seconds=[1, 3], retry_condition_fn=only_transient)
def stop_container(host: GpuHost, name: str, grace_s: int = 10) -> dict[str, Any]:
    """Stop container `name` (SIGTERM, `grace_s` s, then SIGKILL) if it runs.

    Returns {name, action: stopped | already-stopped | absent}; raises VerificationFailed
    when it still runs afterwards."""
    current = _inspect(host, name)
    if current is None:
        return {"name": name, "action": "absent"}
    if not current["running"]:
        return {"name": name, "action": "already-stopped"}
    run_remote(host, ["docker", "stop", "-t", str(grace_s), name], timeout_s=grace_s + 60)
    after = _inspect(host, name)
    if after is not None and after["running"]:
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


@task(retries=2, retry_delay_seconds=[1, 3], retry_condition_fn=only_transient)
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
