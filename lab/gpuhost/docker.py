"""`docker` of a simulated GPU host: the subset phasegate uses, with docker's formats and codes.

Commands: `run -d`, `start`, `stop`, `restart`, `rm`, `ps`, `inspect`, `logs` (also as
`docker container ...`).
Only the image `vllm/vllm-openai[:tag]` exists. A "container" is a detached process (own session)
running `python -m lab.vllm_sim <vLLM args> --gpu-host H --lab-dir D --visible-gpus 0,1
--host 127.0.0.1 --port <host port of -p>` ($PHASEGATE_DOCKER_ENTRYPOINT replaces the module, for
tests), watched by a small forked monitor that records its exit code. Records and logs live in
`<host>/docker/<name>.json|.log`; a lock file serialises concurrent shims.

Path rule for `-v SRC:DST`: the host's filesystem root is `<lab>/hosts/<host>/`, so an absolute
SRC outside the lab (e.g. `/models`) means `<host dir>/models`; a SRC inside the lab is used as
is; a named volume `NAME` is `<host dir>/volumes/NAME`. vLLM arguments (and `--opt=VALUE`
values) that are container paths under a mount's DST are rewritten to the host path.
There is no restart daemon: `--restart` is recorded and reported only. Ports bind 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import csv
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from phasegate.lab.control import read_gpus, write_json_atomic
from phasegate.lab.layout import LabLayout
from phasegate.lab.procs import free_port, port_free

__all__ = ["IMAGE", "DockerError", "main", "run_command", "running_gpu_pids"]

IMAGE = "vllm/vllm-openai"
ENTRYPOINT = ["python3", "-m", "vllm.entrypoints.openai.api_server"]
DEFAULT_MODULE = "phasegate.lab.vllm_sim"
ENTRYPOINT_ENV = "PHASEGATE_DOCKER_ENTRYPOINT"
ZERO_TIME = "0001-01-01T00:00:00Z"
_NAME_RE = re.compile(r"^/?[a-zA-Z0-9][a-zA-Z0-9_.-]+$")
_OCI = ("docker: Error response from daemon: failed to create task for container: failed to "
        "create shim task: OCI runtime create failed: runc create failed: unable to start "
        "container process: error during container init: error running hook #0: error running "
        "hook: exit status 1, stdout: , stderr: Auto-detected mode as 'legacy'\n")


class DockerError(Exception):
    """A failed docker command: message for stderr and exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.message, self.code = message, code


def _run_error(message: str) -> DockerError:
    """An error of `docker run` (exit 125, with the usage hint)."""
    return DockerError(f"docker: {message}\nSee 'docker run --help'.", 125)


def _no_such(name: str) -> DockerError:
    return DockerError(f"Error response from daemon: No such container: {name}", 1)


# ----------------------------------------------------------------------------- records


def _dir(layout: LabLayout, host: str) -> Path:
    d = layout.containers_dir(host)
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def _locked(layout: LabLayout, host: str) -> Iterator[int]:
    """Exclusive lock on the host's container records; yields the lock fd."""
    fd = os.open(_dir(layout, host) / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _records(layout: LabLayout, host: str) -> list[dict[str, Any]]:
    """Every container record of `host`, newest first."""
    out = []
    for path in _dir(layout, host).glob("*.json"):
        with contextlib.suppress(OSError, ValueError):
            out.append(json.loads(path.read_text()))
    return sorted(out, key=lambda r: r.get("created", ""), reverse=True)


def _find(layout: LabLayout, host: str, ref: str) -> dict[str, Any] | None:
    """The record named `ref` (also `/name`, a full id or a unique id prefix)."""
    recs = _records(layout, host)
    for rec in recs:
        if rec["name"] == ref.lstrip("/") or rec["id"] == ref:
            return rec
    hits = [r for r in recs if len(ref) >= 3 and r["id"].startswith(ref)]
    return hits[0] if len(hits) == 1 else None


def _save(layout: LabLayout, host: str, rec: dict[str, Any]) -> None:
    write_json_atomic(_dir(layout, host) / f"{rec['name']}.json", rec)


def _proc_start(pid: int) -> str | None:
    """Start time of `pid` (clock ticks since boot) or None if gone or a zombie."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] in ("Z", "X") else fields[19]


def _is_running(rec: dict[str, Any]) -> bool:
    """True while the container's process (the same one, not a reused PID) lives."""
    return (rec.get("state") == "running" and bool(rec.get("pid"))
            and _proc_start(int(rec["pid"])) == rec.get("pid_start"))


def _status(rec: dict[str, Any]) -> str:
    """docker's state word: running | exited | created."""
    if _is_running(rec):
        return "running"
    return "exited" if rec.get("started_at") else "created"


def _exit_code(rec: dict[str, Any]) -> int:
    """Recorded exit code; 255 when the process vanished without one being recorded."""
    if _is_running(rec):
        return 0
    code = rec.get("exit_code")
    return 255 if code is None else int(code)


def running_gpu_pids(layout: LabLayout, host: str) -> list[tuple[int, list[int]]]:
    """(pid, GPU indices) of every running container of `host` (for nvidia-smi)."""
    return [(int(r["pid"]), list(r["gpus"]["indices"])) for r in _records(layout, host)
            if _is_running(r)]


# ----------------------------------------------------------------------------- time


def _now_rfc3339() -> str:
    ns = time.time_ns()
    stamp = dt.datetime.fromtimestamp(ns // 10**9, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{stamp}.{ns % 10**9:09d}Z"


def _parse_time(value: str) -> float:
    """Epoch seconds of an RFC 3339 time written by `_now_rfc3339`."""
    base, _, frac = value.rstrip("Z").partition(".")
    stamp = dt.datetime.strptime(base, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=dt.UTC).timestamp()
    return stamp + (float("0." + frac) if frac else 0.0)


def human_duration(seconds: float) -> str:
    """docker's units.HumanDuration ("Less than a second", "About a minute", "3 hours")."""
    s = int(seconds)
    minutes, hours = int(seconds / 60), int(seconds / 3600 + 0.5)
    table: list[tuple[bool, Callable[[], str]]] = [
        (s < 1, lambda: "Less than a second"), (s == 1, lambda: "1 second"),
        (s < 60, lambda: f"{s} seconds"), (minutes == 1, lambda: "About a minute"),
        (minutes < 60, lambda: f"{minutes} minutes"), (hours == 1, lambda: "About an hour"),
        (hours < 48, lambda: f"{hours} hours"), (hours < 24 * 14, lambda: f"{hours // 24} days"),
        (hours < 24 * 60, lambda: f"{hours // 24 // 7} weeks"),
        (hours < 24 * 730, lambda: f"{hours // 24 // 30} months"),
    ]
    for cond, text in table:
        if cond:
            return text()
    return f"{int(seconds / 3600) // 24 // 365} years"


def _status_text(rec: dict[str, Any], now: float) -> str:
    """`Up 3 minutes` / `Exited (0) 2 seconds ago` / `Created`."""
    state = _status(rec)
    if state == "running":
        return "Up " + human_duration(now - _parse_time(rec["started_at"]))
    if state == "created":
        return "Created"
    finished = rec.get("finished_at") or rec["started_at"]
    return f"Exited ({_exit_code(rec)}) {human_duration(now - _parse_time(finished))} ago"


# ----------------------------------------------------------------------------- run: parsing

_RUN_VALUED = {"--name", "--gpus", "--restart", "-p", "--publish", "-v", "--volume", "-e",
               "--env", "--ipc", "--shm-size", "--runtime", "--network", "--entrypoint"}
_RUN_FLAGS = {"-d", "--detach", "--rm", "-i", "--interactive", "-t", "--tty", "--init",
              "--privileged"}


def _parse_run(argv: Sequence[str]) -> tuple[dict[str, list[str]], set[str], str, list[str]]:
    """(valued options, flags, image, args after the image) of `docker run`."""
    opts: dict[str, list[str]] = {}
    flags: set[str] = set()
    i = 0
    while i < len(argv) and argv[i].startswith("-"):
        key, eq, value = argv[i].partition("=")
        if key in _RUN_VALUED:
            if not eq:
                i += 1
                if i >= len(argv):
                    raise _run_error(f"flag needs an argument: {key}")
                value = argv[i]
            opts.setdefault({"--publish": "-p", "--volume": "-v", "--env": "-e"}.get(key, key),
                            []).append(value)
        elif key in _RUN_FLAGS and not eq:
            flags.add({"--detach": "-d"}.get(key, key))
        elif re.fullmatch(r"-[dit]+", key) and not eq:
            flags.update(f"-{c}" for c in key[1:])
        else:
            flag = key.lstrip("-")
            raise DockerError(f"unknown flag: {key}\nSee 'docker run --help'." if key.startswith(
                "--") else f"unknown shorthand flag: '{flag[:1]}' in {key}\n"
                "See 'docker run --help'.", 125)
        i += 1
    if i >= len(argv):
        raise _run_error('"docker run" requires at least 1 argument.\n'
                         "Usage:  docker run [OPTIONS] IMAGE [COMMAND] [ARG...]\n\n"
                         "Create and run a new container from an image")
    return opts, flags, argv[i], list(argv[i + 1:])


def _check_image(image: str) -> None:
    """Only vllm/vllm-openai exists locally (and no registry is reachable)."""
    ref = image.split("@")[0]
    repo, tag = (ref.rsplit(":", 1) if ":" in ref.rsplit("/", 1)[-1] else (ref, "latest"))
    bare = re.sub(r"^(docker\.io/|index\.docker\.io/)?(library/)?", "", repo)
    if bare != IMAGE:
        sys.stderr.write(f"Unable to find image '{repo}:{tag}' locally\n")
        raise _run_error(f"Error response from daemon: pull access denied for {bare}, repository "
                         "does not exist or may require 'docker login': denied: requested "
                         "access to the resource is denied.")


def _parse_gpus(spec: str) -> tuple[int | None, list[str] | None]:
    """(count or -1 for all, device ids) of a --gpus value like docker's opts.GpuOpts."""
    count: int | None = None
    ids: list[str] | None = None
    fields = next(csv.reader([spec]), [])
    for field in fields:
        key, eq, value = field.partition("=")
        if not eq and key in ("all", "count") or key == "count" and value == "all":
            count = -1
        elif not eq and key.isdigit():
            count = int(key)
        elif key == "count" and value.isdigit():
            count = int(value)
        elif key == "device":
            ids = [v.strip() for v in value.split(",") if v.strip()]
        elif key not in ("capabilities", "driver"):
            raise _run_error(f'invalid argument "{spec}" for "--gpus" flag: unexpected key '
                             f"'{key}' in '{field}'")
    if count is not None and ids is not None:
        raise _run_error(f'invalid argument "{spec}" for "--gpus" flag: cannot set both Count '
                         "and DeviceIDs on device request")
    return count, ids


def _resolve_gpus(layout: LabLayout, host: str, spec: str | None) -> list[int]:
    """Indices of the host's GPUs that `--gpus spec` selects; docker's error if impossible."""
    if spec is None:
        return []
    count, ids = _parse_gpus(spec)
    installed = read_gpus(layout, host)
    if not installed:
        raise DockerError(_OCI + "nvidia-container-cli: initialization error: nvml error: "
                          "driver not loaded: unknown.", 125)
    if ids is None:
        want = len(installed) if count in (None, -1) else int(count)
        ids = [str(i) for i in range(want)]
    out: list[int] = []
    for ident in ids:
        match = [int(g["index"]) for g in installed if ident in (str(g["index"]), g["uuid"])]
        if not match:
            raise DockerError(_OCI + f"nvidia-container-cli: device error: {ident}: unknown "
                              "device: unknown.", 125)
        out.append(match[0])
    return out


def _parse_ports(specs: list[str]) -> list[dict[str, Any]]:
    """[{host_ip, host_port, container_port}] from -p values (ip:host:container, host:container)."""
    out = []
    for spec in specs:
        parts = spec.split("/")[0].split(":")
        if len(parts) == 1:
            parts = ["", "", parts[0]]
        elif len(parts) == 2:
            parts = ["", *parts]
        if len(parts) != 3 or not parts[2].isdigit() or (parts[1] and not parts[1].isdigit()):
            raise _run_error(f'invalid argument "{spec}" for "-p, --publish" flag: '
                             f"Invalid containerPort: {parts[-1]}")
        out.append({"host_ip": parts[0], "host_port": int(parts[1]) if parts[1] else 0,
                    "container_port": int(parts[2])})
    return out


def _host_source(layout: LabLayout, host: str, src: str) -> Path:
    """Where a -v source lives in the lab (see the module docstring for the rule)."""
    hdir = layout.host_dir(host).resolve()
    if not src.startswith("/"):
        return hdir / "volumes" / src
    path = Path(os.path.normpath(src))
    if path.is_relative_to(layout.root.resolve()):
        return path
    return hdir / str(path).lstrip("/")


def _parse_mounts(layout: LabLayout, host: str, specs: list[str]) -> list[dict[str, Any]]:
    """[{source, destination, host_source, rw}] from -v values."""
    out = []
    for spec in specs:
        parts = spec.split(":")
        if len(parts) not in (2, 3) or not parts[1].startswith("/"):
            raise _run_error(f'Error response from daemon: invalid volume specification: '
                             f"'{spec}'")
        host_src = _host_source(layout, host, parts[0])
        host_src.mkdir(parents=True, exist_ok=True)
        out.append({"source": parts[0], "destination": os.path.normpath(parts[1]),
                    "host_source": str(host_src), "rw": not (len(parts) == 3 and "ro" in
                                                             parts[2].split(","))})
    return out


def _translate(arg: str, mounts: list[dict[str, Any]]) -> str:
    """A container path (or `--opt=/path`) rewritten to the host path of its mount."""
    if arg.startswith("--") and "=" in arg:
        key, _, value = arg.partition("=")
        return f"{key}={_translate(value, mounts)}"
    if not arg.startswith("/"):
        return arg
    for m in sorted(mounts, key=lambda m: len(m["destination"]), reverse=True):
        dst = m["destination"].rstrip("/") or "/"
        if arg == dst or arg.startswith(dst.rstrip("/") + "/"):
            return m["host_source"].rstrip("/") + arg[len(dst.rstrip("/")):]
    return arg


def _strip_host_port(args: list[str]) -> tuple[list[str], int]:
    """vLLM args without --host/--port (the shim sets them) and vLLM's container port."""
    out, port, i = [], 8000, 0
    while i < len(args):
        key, eq, value = args[i].partition("=")
        if key in ("--host", "--port"):
            if not eq:
                value = args[i + 1] if i + 1 < len(args) else ""
                i += 1
            if key == "--port" and value.isdigit():
                port = int(value)
        else:
            out.append(args[i])
        i += 1
    return out, port


def _parse_env(specs: list[str]) -> list[str]:
    """K=V strings from -e values (`-e K` takes K from the caller's environment)."""
    out = []
    for spec in specs:
        if "=" in spec:
            out.append(spec)
        elif spec in os.environ:
            out.append(f"{spec}={os.environ[spec]}")
    return out


def _restart_policy(value: str) -> dict[str, Any]:
    name, _, count = value.partition(":")
    if name not in ("no", "always", "unless-stopped", "on-failure") or (
            count and (name != "on-failure" or not count.isdigit())):
        raise _run_error(f"invalid restart policy format: {value}")
    return {"Name": name, "MaximumRetryCount": int(count or 0)}


def _random_name() -> str:
    adjectives = ["admiring", "brave", "eager", "focused", "jolly", "keen", "quirky", "vibrant"]
    names = ["turing", "hopper", "lovelace", "curie", "noether", "shannon", "ritchie", "knuth"]
    return f"{secrets.choice(adjectives)}_{secrets.choice(names)}"


# ----------------------------------------------------------------------------- run: start


def _publish(ports: list[dict[str, Any]], container_port: int, name: str) -> int:
    """The host port the vLLM server must bind; docker's error when it is taken."""
    match = [p for p in ports if p["container_port"] == container_port]
    if not match:
        return free_port()  # unpublished: reachable only "inside"
    if not match[0]["host_port"]:
        match[0]["host_port"] = free_port()
    port = int(match[0]["host_port"])
    if not port_free(port):
        raise _run_error(f"Error response from daemon: driver failed programming external "
                         f"connectivity on endpoint {name}: Error starting userland proxy: "
                         f"listen tcp4 0.0.0.0:{port}: bind: address already in use.")
    return port


def _monitor(argv: list[str], env: dict[str, str], cwd: Path, log: Path, pipe_w: int,
             layout: LabLayout, host: str, name: str, cid: str) -> None:
    """Body of the forked monitor: start the container process, report its PID, wait, record."""
    os.setsid()
    null = os.open(os.devnull, os.O_RDWR)
    out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.closerange(3, pipe_w)
    os.closerange(pipe_w + 1, 4096)
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=1, stderr=2, env=env, cwd=cwd)
    os.write(pipe_w, f"{proc.pid} {_proc_start(proc.pid) or ''}\n".encode())
    os.close(pipe_w)
    code = proc.wait()
    with _locked(layout, host):
        rec = _find(layout, host, name)
        if (rec is not None and rec["id"] == cid and rec.get("pid") == proc.pid
                and rec.get("exit_code") is None):
            rec.update(state="exited", exit_code=code if code >= 0 else 128 - code,
                       finished_at=_now_rfc3339())
            _save(layout, host, rec)


def _start(argv: list[str], env: dict[str, str], layout: LabLayout, host: str, name: str,
           cid: str, new_log: bool = True) -> tuple[int, str, int]:
    """Fork the monitor; return (container pid, its start time, monitor pid)."""
    log = _dir(layout, host) / f"{name}.log"
    if new_log:
        log.write_bytes(b"")
    pipe_r, pipe_w = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    child = os.fork()
    if child == 0:
        code = 0
        try:
            os.close(pipe_r)
            _monitor(argv, env, layout.host_dir(host), log, pipe_w, layout, host, name, cid)
        except BaseException:  # noqa: BLE001 - never return into the parent's code
            code = 1
        finally:
            os._exit(code)
    os.close(pipe_w)
    with os.fdopen(pipe_r) as fh:
        line = fh.readline().split()
    if not line:
        raise DockerError("docker: Error response from daemon: failed to start the container "
                          "process (see the container log).", 125)
    return int(line[0]), (line[1] if len(line) > 1 else ""), child


def _container_argv(layout: LabLayout, host: str, module: str, args: list[str],
                    gpus: list[int], port: int) -> list[str]:
    """Command line of the simulated vLLM server."""
    return [sys.executable, "-m", module, *args, "--gpu-host", host,
            "--lab-dir", str(layout.root.resolve()),
            "--visible-gpus", ",".join(str(i) for i in gpus), "--host", "127.0.0.1",
            "--port", str(port)]


def _process_env(env: list[str], gpus: list[int]) -> dict[str, str]:
    """Environment of the container process: the shim's, the -e values, the visible GPUs."""
    return {**os.environ, **dict(e.split("=", 1) for e in env),
            "NVIDIA_VISIBLE_DEVICES": ",".join(map(str, gpus)) or "void"}


def cmd_run(layout: LabLayout, host: str, argv: Sequence[str]) -> int:
    """docker run -d ...: prints the container id."""
    opts, flags, image, args = _parse_run(argv)
    if "-d" not in flags:
        raise _run_error("the phasegate lab's docker runs containers detached only (use -d)")
    name = (opts.get("--name") or [_random_name()])[-1].lstrip("/")
    if not _NAME_RE.match(name):
        raise _run_error(f"Error response from daemon: Invalid container name ({name}), only "
                         "[a-zA-Z0-9][a-zA-Z0-9_.-] are allowed.")
    restart = _restart_policy((opts.get("--restart") or ["no"])[-1])
    ports = _parse_ports(opts.get("-p", []))
    _check_image(image)
    mounts = _parse_mounts(layout, host, opts.get("-v", []))
    env = _parse_env(opts.get("-e", []))
    gpu_spec: str | None = opts["--gpus"][-1] if opts.get("--gpus") else None
    with _locked(layout, host):
        existing = _find(layout, host, name)
        if existing is not None and existing["name"] == name:
            raise _run_error(f'Error response from daemon: Conflict. The container name "/{name}" '
                             f'is already in use by container "{existing["id"]}". You have to '
                             "remove (or rename) that container to be able to reuse that name.")
        gpus = _resolve_gpus(layout, host, gpu_spec)
        vllm_args, container_port = _strip_host_port([_translate(a, mounts) for a in args])
        port = _publish(ports, container_port, name)
        cid = secrets.token_hex(32)
        module = os.environ.get(ENTRYPOINT_ENV) or DEFAULT_MODULE
        proc_argv = _container_argv(layout, host, module, vllm_args, gpus, port)
        created = _now_rfc3339()
        pid, pid_start, monitor = _start(proc_argv, _process_env(env, gpus), layout, host, name,
                                         cid)
        rec = {"id": cid, "name": name, "image": image, "args": args, "entrypoint": ENTRYPOINT,
               "argv": proc_argv, "module": module, "vllm_args": vllm_args, "created": created,
               "started_at": created, "finished_at": None,
               "state": "running", "exit_code": None, "pid": pid, "pid_start": pid_start,
               "monitor_pid": monitor, "ports": ports, "host_port": port,
               "gpus": {"spec": gpu_spec, "indices": gpus}, "restart": restart,
               "mounts": mounts, "env": env, "flags": sorted(flags),
               "opts": {k: v for k, v in opts.items() if k in ("--ipc", "--shm-size")},
               "host": host, "log": str(_dir(layout, host) / f"{name}.log")}
        _save(layout, host, rec)
    print(cid)
    return 0


# ----------------------------------------------------------------------------- stop / rm


def _wait_gone(rec: dict[str, Any], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _is_running(rec):
            return True
        time.sleep(0.05)
    return not _is_running(rec)


def _kill(layout: LabLayout, host: str, rec: dict[str, Any], grace: float) -> None:
    """SIGTERM (if grace > 0), wait `grace` s, SIGKILL; make sure the exit is recorded."""
    killed = False
    if grace > 0:
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(rec["pid"]), signal.SIGTERM)
    if not _wait_gone(rec, grace):
        killed = True
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(rec["pid"]), signal.SIGKILL)
        _wait_gone(rec, 5.0)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # the monitor records the real exit code
        cur = _find(layout, host, rec["name"])
        if cur is None or cur.get("exit_code") is not None:
            return
        time.sleep(0.05)
    with _locked(layout, host):
        cur = _find(layout, host, rec["name"])
        if cur is not None and cur.get("exit_code") is None:
            cur.update(state="exited", exit_code=137 if killed else 143,
                       finished_at=_now_rfc3339())
            _save(layout, host, cur)


def _split_opts(argv: Sequence[str], valued: set[str], flags: set[str],
                cmd: str) -> tuple[dict[str, str], list[str]]:
    """Options (valued and boolean, '' for flags) and positional arguments."""
    opts: dict[str, str] = {}
    pos: list[str] = []
    it = iter(argv)
    for arg in it:
        key, eq, value = arg.partition("=")
        if key in valued:
            opts[key] = value if eq else next(it, "")
        elif arg in flags:
            opts[arg] = ""
        elif arg.startswith("-") and arg != "-":
            raise DockerError(f"unknown flag: {key}\nSee 'docker {cmd} --help'.", 125)
        else:
            pos.append(arg)
    return opts, pos


def _need_args(pos: list[str], cmd: str) -> None:
    if not pos:
        raise DockerError(f'"docker {cmd}" requires at least 1 argument.\n'
                          f"See 'docker {cmd} --help'.", 1)


def cmd_stop(layout: LabLayout, host: str, argv: Sequence[str]) -> int:
    """docker stop [-t N] NAME...: prints each name."""
    opts, names = _split_opts(argv, {"-t", "--time", "-s", "--signal"}, set(), "stop")
    _need_args(names, "stop")
    grace = float(opts.get("-t") or opts.get("--time") or 10)
    code = 0
    for name in names:
        rec = _find(layout, host, name)
        if rec is None:
            sys.stderr.write(_no_such(name).message + "\n")
            code = 1
            continue
        if _is_running(rec):
            _kill(layout, host, rec, grace)
        print(name)
    return code


def _restart(layout: LabLayout, host: str, rec: dict[str, Any]) -> None:
    """Start a stopped container again with its recorded command (GPUs re-resolved)."""
    with _locked(layout, host):
        cur = _find(layout, host, rec["name"])
        if cur is None or _is_running(cur):
            return
        try:
            gpus = _resolve_gpus(layout, host, cur["gpus"]["spec"])
        except DockerError as exc:
            raise DockerError(exc.message.removeprefix("docker: ") + "\nError: failed to start "
                              f"containers: {cur['name']}", 1) from None
        port = int(cur["host_port"])
        if not port_free(port):
            raise DockerError(f"Error response from daemon: driver failed programming external "
                              f"connectivity on endpoint {cur['name']}: Bind for 0.0.0.0:{port} "
                              f"failed: port is already allocated\nError: failed to start "
                              f"containers: {cur['name']}", 1)
        argv = _container_argv(layout, host, cur.get("module") or DEFAULT_MODULE,
                               cur["vllm_args"], gpus, port)
        pid, pid_start, monitor = _start(argv, _process_env(cur.get("env", []), gpus), layout,
                                         host, cur["name"], cur["id"], new_log=False)
        cur.update(argv=argv, pid=pid, pid_start=pid_start, monitor_pid=monitor,
                   state="running", exit_code=None, started_at=_now_rfc3339(),
                   gpus={**cur["gpus"], "indices": gpus})
        _save(layout, host, cur)


def cmd_start(layout: LabLayout, host: str, argv: Sequence[str]) -> int:
    """docker start NAME...: start stopped containers again; prints each name."""
    _, names = _split_opts(argv, set(), {"-a", "--attach", "-i", "--interactive"}, "start")
    _need_args(names, "start")
    code = 0
    for name in names:
        rec = _find(layout, host, name)
        if rec is None:
            sys.stderr.write(_no_such(name).message + "\nError: failed to start containers: "
                             f"{name}\n")
            code = 1
            continue
        try:
            _restart(layout, host, rec)
        except DockerError as exc:
            sys.stderr.write(exc.message + "\n")
            code = 1
            continue
        print(name)
    return code


def cmd_restart(layout: LabLayout, host: str, argv: Sequence[str]) -> int:
    """docker restart [-t N] NAME...: stop (if running), then start."""
    opts, names = _split_opts(argv, {"-t", "--time"}, set(), "restart")
    _need_args(names, "restart")
    code = 0
    for name in names:
        rec = _find(layout, host, name)
        if rec is None:
            sys.stderr.write(_no_such(name).message + "\n")
            code = 1
            continue
        if _is_running(rec):
            _kill(layout, host, rec, float(opts.get("-t") or opts.get("--time") or 10))
        try:
            _restart(layout, host, rec)
        except DockerError as exc:
            sys.stderr.write(exc.message + "\n")
            code = 1
            continue
        print(name)
    return code


def _remove_files(layout: LabLayout, host: str, rec: dict[str, Any]) -> None:
    """Delete the record; keep the log under docker/removed/ for post-mortems."""
    d = _dir(layout, host)
    log = d / f"{rec['name']}.log"
    if log.exists():
        (d / "removed").mkdir(exist_ok=True)
        shutil.move(str(log), d / "removed" / f"{rec['name']}-{rec['id'][:12]}.log")
    (d / f"{rec['name']}.json").unlink(missing_ok=True)


def cmd_rm(layout: LabLayout, host: str, argv: Sequence[str]) -> int:
    """docker rm [-f] NAME...: refuses a running container without -f."""
    opts, names = _split_opts(argv, set(), {"-f", "--force", "-v", "--volumes"}, "rm")
    _need_args(names, "rm")
    force = "-f" in opts or "--force" in opts
    code = 0
    for name in names:
        rec = _find(layout, host, name)
        if rec is None:
            sys.stderr.write(_no_such(name).message + "\n")
            code = 1
            continue
        if _is_running(rec):
            if not force:
                sys.stderr.write(f"Error response from daemon: You cannot remove a running "
                                 f"container {rec['id']}. Stop the container before attempting "
                                 "removal or force remove\n")
                code = 1
                continue
            _kill(layout, host, rec, 0)
        with _locked(layout, host):
            _remove_files(layout, host, rec)
        print(name)
    return code


# ----------------------------------------------------------------------------- templates


def _go_str(value: Any) -> str:
    """Go's default text/template rendering of a JSON-ish value."""
    if value is None:
        return "<nil>"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return "[" + " ".join(_go_str(v) for v in value) + "]"
    if isinstance(value, dict):
        return "map[" + " ".join(f"{k}:{_go_str(value[k])}" for k in sorted(value)) + "]"
    return str(value)


_TOKEN = re.compile(r"\{\{\s*(json\s+|upper\s+|lower\s+)?\.([\w.]*)\s*\}\}")


def render(template: str, obj: dict[str, Any]) -> str:
    """A Go template subset: `{{.A.B}}`, `{{json .X}}`, `{{json .}}`, `{{upper/lower .X}}`."""
    template = template.replace("\\t", "\t").replace("\\n", "\n")

    def sub(m: re.Match[str]) -> str:
        value: Any = obj
        for part in filter(None, m.group(2).split(".")):
            if not isinstance(value, dict) or part not in value:
                return "<no value>"
            value = value[part]
        func = (m.group(1) or "").strip()
        if func == "json":
            return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        text = _go_str(value)
        return text.upper() if func == "upper" else text.lower() if func == "lower" else text
    return _TOKEN.sub(sub, template)


def _table(rows: list[list[str]]) -> str:
    """docker's tabwriter layout: min width 10, padding 3, last column unpadded."""
    if not rows:
        return ""
    widths = [max(10, max(len(r[i]) for r in rows) + 3) for i in range(len(rows[0]))]
    return "\n".join("".join(c.ljust(w) for c, w in zip(r[:-1], widths, strict=False)) + r[-1]
                     for r in rows)


# ----------------------------------------------------------------------------- ps


def _ports_text(rec: dict[str, Any], running: bool) -> str:
    if not running:
        return ""
    return ", ".join(f"127.0.0.1:{p['host_port']}->{p['container_port']}/tcp"
                     for p in rec.get("ports", []))


def _ps_row(rec: dict[str, Any], now: float, no_trunc: bool) -> dict[str, Any]:
    """The fields of `docker ps --format` for one container."""
    running = _is_running(rec)
    command = " ".join([*rec["entrypoint"], *rec["args"]])
    if not no_trunc and len(command) > 20:
        command = command[:19] + "…"
    created = dt.datetime.fromtimestamp(_parse_time(rec["created"]), dt.UTC)
    return {"Command": json.dumps(command, ensure_ascii=False),
            "CreatedAt": created.strftime("%Y-%m-%d %H:%M:%S +0000 UTC"),
            "ID": rec["id"] if no_trunc else rec["id"][:12], "Image": rec["image"], "Labels": "",
            "LocalVolumes": "0", "Mounts": ",".join(m["source"] for m in rec.get("mounts", [])),
            "Names": rec["name"], "Networks": "bridge", "Ports": _ports_text(rec, running),
            "RunningFor": human_duration(now - _parse_time(rec["created"])) + " ago",
            "Size": "0B", "State": _status(rec), "Status": _status_text(rec, now)}


_HEADERS = {"ID": "CONTAINER ID", "Image": "IMAGE", "Command": "COMMAND",
            "CreatedAt": "CREATED AT", "RunningFor": "CREATED", "Ports": "PORTS",
            "State": "STATE", "Status": "STATUS", "Size": "SIZE", "Names": "NAMES",
            "Labels": "LABELS", "Mounts": "MOUNTS", "Networks": "NETWORKS",
            "LocalVolumes": "LOCAL VOLUMES"}
_DEFAULT_PS = "table {{.ID}}\t{{.Image}}\t{{.Command}}\t{{.RunningFor}}\t{{.Status}}\t" \
              "{{.Ports}}\t{{.Names}}"


def _matches(rec: dict[str, Any], filters: list[str]) -> bool:
    """docker ps --filter name=REGEX | id=PREFIX | status=STATE (ANDed across keys)."""
    for flt in filters:
        key, _, value = flt.partition("=")
        if key == "name":
            try:
                ok = re.search(value, rec["name"]) is not None
            except re.error:
                ok = value in rec["name"]
        elif key == "id":
            ok = rec["id"].startswith(value)
        elif key == "status":
            ok = _status(rec) == value
        else:
            raise DockerError(f"Error response from daemon: invalid filter '{key}'", 1)
        if not ok:
            return False
    return True


def cmd_ps(layout: LabLayout, host: str, argv: Sequence[str]) -> int:
    """docker ps [-a] [-q] [--no-trunc] [--filter K=V]... [--format FMT]."""
    filters: list[str] = []
    rest: list[str] = []
    it = iter(argv)
    for arg in it:
        if arg in ("-f", "--filter"):
            filters.append(next(it, ""))
        elif arg.startswith("--filter="):
            filters.append(arg.split("=", 1)[1])
        else:
            rest.append(arg)
    opts, pos = _split_opts(rest, {"--format"}, {"-a", "--all", "-q", "--quiet", "--no-trunc"},
                            "ps")
    if pos:
        raise DockerError("\"docker ps\" accepts no arguments.\nSee 'docker ps --help'.", 1)
    show_all = "-a" in opts or "--all" in opts
    no_trunc = "--no-trunc" in opts
    now = time.time()
    recs = [r for r in _records(layout, host)
            if (show_all or _is_running(r)) and _matches(r, filters)]
    rows = [_ps_row(r, now, no_trunc) for r in recs]
    if "-q" in opts or "--quiet" in opts:
        if rows:
            print("\n".join(r["ID"] for r in rows))
        return 0
    fmt = opts.get("--format") or _DEFAULT_PS
    if fmt.strip() == "table":
        fmt = _DEFAULT_PS
    if fmt.startswith("table"):
        body = fmt[5:].strip().replace("\\t", "\t")
        header = re.sub(r"\{\{\s*(?:json\s+)?\.(\w*)\s*\}\}",
                        lambda m: _HEADERS.get(m.group(1), m.group(1).upper()), body)
        lines = [header.split("\t")] + [render(body, r).split("\t") for r in rows]
        print(_table(lines))
    elif rows:
        print("\n".join(render(fmt, r) for r in rows))
    return 0


# ----------------------------------------------------------------------------- inspect / logs


_IMAGE_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
              "NVIDIA_VISIBLE_DEVICES=all", "NVIDIA_DRIVER_CAPABILITIES=compute,utility"]


def _inspect_obj(rec: dict[str, Any]) -> dict[str, Any]:
    """docker inspect's JSON object for one container."""
    running, status = _is_running(rec), _status(rec)
    gpus = rec["gpus"]
    dev_req: list[dict[str, Any]] = []
    if gpus["spec"] is not None:
        count, ids = _parse_gpus(gpus["spec"])
        dev_req = [{"Driver": "", "Count": count if count is not None else 0, "DeviceIDs": ids,
                    "Capabilities": [["gpu"]], "Options": {}}]
    bindings = {f"{p['container_port']}/tcp": [{"HostIp": p["host_ip"],
                                                "HostPort": str(p["host_port"] or "")}]
                for p in rec.get("ports", [])}
    net_ports = {f"{p['container_port']}/tcp": [{"HostIp": "127.0.0.1",
                                                 "HostPort": str(p["host_port"])}]
                 for p in rec.get("ports", [])} if running else {}
    binds = [f"{m['source']}:{m['destination']}" + ("" if m["rw"] else ":ro")
             for m in rec.get("mounts", [])]
    return {
        "Id": rec["id"], "Created": rec["created"], "Path": rec["entrypoint"][0],
        "Args": [*rec["entrypoint"][1:], *rec["args"]],
        "State": {"Status": status, "Running": running, "Paused": False, "Restarting": False,
                  "OOMKilled": False, "Dead": False, "Pid": int(rec["pid"]) if running else 0,
                  "ExitCode": _exit_code(rec), "Error": "", "StartedAt": rec["started_at"],
                  "FinishedAt": ZERO_TIME if running else (rec.get("finished_at")
                                                           or rec["started_at"])},
        "Image": "sha256:" + hashlib.sha256(rec["image"].split(":")[0].encode()).hexdigest(),
        "LogPath": rec["log"], "Name": "/" + rec["name"], "RestartCount": 0,
        "Driver": "overlay2", "Platform": "linux",
        "HostConfig": {"Binds": binds or None, "NetworkMode": "default",
                       "PortBindings": bindings, "RestartPolicy": rec["restart"],
                       "AutoRemove": "--rm" in rec.get("flags", []),
                       "DeviceRequests": dev_req or None,
                       "IpcMode": (rec.get("opts", {}).get("--ipc") or ["private"])[-1]},
        "Mounts": [{"Type": "volume" if not m["source"].startswith("/") else "bind",
                    "Source": m["source"], "Destination": m["destination"], "Mode": "",
                    "RW": m["rw"], "Propagation": "rprivate"} for m in rec.get("mounts", [])],
        "Config": {"Hostname": rec["id"][:12], "Env": [*rec.get("env", []), *_IMAGE_ENV],
                   "Cmd": rec["args"], "Image": rec["image"],
                   "Entrypoint": rec["entrypoint"], "Labels": {},
                   "ExposedPorts": {f"{p['container_port']}/tcp": {}
                                    for p in rec.get("ports", [])}},
        "NetworkSettings": {"Ports": net_ports},
        "PhasegateLab": {"Host": rec["host"], "Argv": rec["argv"], "HostPort": rec["host_port"],
                         "VisibleGpus": gpus["indices"],
                         "HostSources": [m["host_source"] for m in rec.get("mounts", [])]},
    }


def cmd_inspect(layout: LabLayout, host: str, argv: Sequence[str]) -> int:
    """docker inspect [--format FMT] NAME...: a JSON array, or one rendered line each."""
    opts, names = _split_opts(argv, {"-f", "--format", "--type"}, {"-s", "--size"}, "inspect")
    _need_args(names, "inspect")
    fmt = opts.get("-f") or opts.get("--format")
    objs, code = [], 0
    for name in names:
        rec = _find(layout, host, name)
        if rec is None:
            sys.stderr.write(f"Error: No such object: {name}\n")
            code = 1
        else:
            objs.append(_inspect_obj(rec))
    if fmt:
        for obj in objs:
            print(render(fmt, obj))
    else:
        print(json.dumps(objs, indent=4, ensure_ascii=False))
    return code


def cmd_logs(layout: LabLayout, host: str, argv: Sequence[str]) -> int:
    """docker logs [--tail N|-n N] NAME (stdout and stderr were merged into one log)."""
    opts, names = _split_opts(argv, {"--tail", "-n"}, {"-t", "--timestamps"}, "logs")
    if len(names) != 1:
        raise DockerError("\"docker logs\" requires exactly 1 argument.\n"
                          "See 'docker logs --help'.", 1)
    rec = _find(layout, host, names[0])
    if rec is None:
        raise _no_such(names[0])
    data = Path(rec["log"]).read_bytes() if Path(rec["log"]).exists() else b""
    tail = opts.get("--tail") or opts.get("-n") or "all"
    if tail != "all":
        if not tail.lstrip("-").isdigit():
            raise DockerError(f'invalid value "{tail}" for flag --tail', 1)
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-int(tail):]) if int(tail) > 0 else b""
    sys.stdout.flush()
    sys.stdout.buffer.write(data)
    sys.stdout.flush()
    return 0


# ----------------------------------------------------------------------------- main

_COMMANDS: dict[str, Callable[[LabLayout, str, Sequence[str]], int]] = {
    "run": cmd_run, "stop": cmd_stop, "rm": cmd_rm, "ps": cmd_ps, "inspect": cmd_inspect,
    "logs": cmd_logs, "start": cmd_start, "restart": cmd_restart,
}
_CONTAINER_ALIASES = {"ls": "ps", "list": "ps", "remove": "rm"}


def run_command(layout: LabLayout, host: str, argv: Sequence[str]) -> int:
    """Execute one docker command line (without the leading `docker`); return the exit code."""
    argv = list(argv)
    if argv[:1] == ["container"]:
        argv = [_CONTAINER_ALIASES.get(argv[1], argv[1]) if len(argv) > 1 else "--help",
                *argv[2:]]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print("Usage:  docker [OPTIONS] COMMAND\n\nphasegate lab docker: run, start, stop, "
              "restart, rm, ps, inspect, logs")
        return 0
    if argv[0] in ("--version", "-v"):
        print("Docker version 24.0.7, build afdd53b")
        return 0
    cmd = _COMMANDS.get(argv[0])
    if cmd is None:
        raise DockerError(f"docker: '{argv[0]}' is not a docker command.\n"
                          "See 'docker --help'", 1)
    return cmd(layout, host, argv[1:])


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the host's `docker` wrapper."""
    host, lab = os.environ.get("PHASEGATE_GPU_HOST"), os.environ.get("PHASEGATE_LAB")
    layout = LabLayout(Path(lab)) if lab else None
    if not host or layout is None or not layout.host_dir(host).is_dir():
        sys.stderr.write("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
                         "Is the docker daemon running?\n")
        return 1
    try:
        return run_command(layout, host, list(sys.argv[1:] if argv is None else argv))
    except DockerError as exc:
        sys.stdout.flush()
        sys.stderr.write(exc.message + "\n")
        return exc.code


if __name__ == "__main__":
    sys.exit(main())
