"""The vLLM container: one typed model and its one codec (pure).

A `Container` is what phasegate wants running on a GPU host (or found running there). The
codec turns it into the `docker run` argv (`run_argv`), reads an argv back
(`Container.from_run_argv`), and reads `docker inspect`'s JSON (`Container.from_inspect`), so
the plan's containers, the live ones and the snapshots compare field by field
(`differences`). The lab's docker shim parses docker's CLI on its own, on purpose: it plays
the real docker, and a bug must not hide in code both sides share.

The seed's conventions are constants here and nowhere else: the container `vllm-server`,
vLLM's port 8000 inside the container, published on 8000, `-v /models:/models`.
"""

from __future__ import annotations

import csv
import shlex
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "COMPARED_FIELDS",
    "DEFAULT_HOST_PORT",
    "MODELS_MOUNT",
    "VLLM_NAME",
    "VLLM_PORT",
    "Container",
    "Gpus",
    "LiveContainer",
    "differences",
    "replica_name",
]

VLLM_NAME = "vllm-server"          # the seed's container name
VLLM_PORT = 8000                   # vLLM's port inside the container
DEFAULT_HOST_PORT = 8000           # the seed's `-p 8000:8000`
MODELS_MOUNT = "/models:/models"   # the seed's `-v /models:/models`

# The fields that make two containers "the same server": a difference means replace it.
COMPARED_FIELDS = ("image", "args", "gpus", "host_port", "ipc", "volumes")

# docker run options that take a value (the rest are flags, e.g. -d, --rm).
_VALUED = {"--name", "--gpus", "--restart", "-p", "--publish", "-v", "--volume", "-e", "--env",
           "--ipc", "--shm-size", "--runtime", "--network", "--entrypoint"}
# docker's own IPC modes: a container started without --ipc reads back as one of these.
_DEFAULT_IPC = frozenset({"", "private", "shareable"})


def replica_name(index_on_host: int) -> str:
    """The k-th vLLM container on a host: `vllm-server` (the seed's name, so its scripts and
    habits still find it), then `vllm-server-1`, `vllm-server-2`, ..."""
    return VLLM_NAME if index_on_host == 0 else f"{VLLM_NAME}-{index_on_host}"


# ---------------------------------------------------------------- GPUs


@dataclass(frozen=True)
class Gpus:
    """A container's GPU request: device indices or UUIDs (`devices`), or a `count` (-1: all).

    Inspect reports what `--gpus` asked for, not which devices "all" or "count=2" got, so only
    `devices` of indices say exactly which GPUs a container holds (`indices`)."""

    devices: tuple[str, ...] = ()
    count: int = 0

    @classmethod
    def of(cls, *indices: int) -> Gpus:
        """GPUs by index: `Gpus.of(0, 1)` is `--gpus "device=0,1"`."""
        return cls(devices=tuple(str(i) for i in indices))

    @property
    def indices(self) -> tuple[int, ...] | None:
        """The device indices, or None when they are not known (all, count=N, UUIDs)."""
        if self.devices and all(d.isdigit() for d in self.devices):
            return tuple(int(d) for d in self.devices)
        return None

    def overlaps(self, other: Gpus) -> bool:
        """Whether the two may hold a GPU in common (unknown devices: assume they do)."""
        mine, theirs = self.indices, other.indices
        if mine is None or theirs is None:
            return True
        return bool(set(mine) & set(theirs))

    def flag(self) -> str:
        """The value of `--gpus`. A device list carries its double quotes: unquoted,
        "device=0,1" reads as device=0 plus a count of 1 (docker's CSV parsing)."""
        if self.devices:
            return f'"device={",".join(self.devices)}"'
        return "all" if self.count < 0 else f"count={self.count}"

    @classmethod
    def parse_flag(cls, value: str) -> Gpus:
        """`--gpus` as docker reads it: `all`, `2`, `count=2`, `"device=0,1"`."""
        devices: tuple[str, ...] = ()
        count = 0
        for item in next(csv.reader([value]), []):
            key, eq, val = item.partition("=")
            if key == "device":
                devices = tuple(v.strip() for v in val.split(",") if v.strip())
            elif key in ("all", "count") and (not eq or val == "all"):
                count = -1
            elif key.isdigit() and not eq:
                count = int(key)
            elif key == "count" and val.isdigit():
                count = int(val)
        return cls(devices, count)

    def to_json(self) -> list[int] | list[str] | str:
        """[0, 1] (indices), ["GPU-..."] (UUIDs), "all" or "count=N" (snapshot form)."""
        indices = self.indices
        if indices is not None:
            return list(indices)
        return list(self.devices) if self.devices else self.flag()

    @classmethod
    def from_json(cls, data: Any) -> Gpus:
        """Inverse of `to_json`."""
        if isinstance(data, list):
            return cls(devices=tuple(str(d) for d in data))
        return cls.parse_flag(str(data))


# ---------------------------------------------------------------- the container


@dataclass(frozen=True)
class Container:
    """One vLLM container on one GPU host: how `docker run` starts it.

    `host` is the GPU host's name (its Block), `args` the vLLM server's arguments (the
    container command). `host_port` None: not published."""

    host: str
    name: str
    image: str
    args: tuple[str, ...]
    gpus: Gpus | None
    host_port: int | None
    restart: str = "always"
    # vLLM's tensor-parallel workers share tensors through /dev/shm, which docker limits to
    # 64 MB by default (vLLM's docker docs): host IPC.
    ipc: str | None = "host"
    volumes: tuple[str, ...] = (MODELS_MOUNT,)

    @property
    def key(self) -> tuple[str, str]:
        """(host, name): one container of that name per host."""
        return (self.host, self.name)

    @property
    def served_model(self) -> str:
        """The model name clients ask for: --served-model-name, else --model."""
        opts = dict(zip(self.args[::2], self.args[1::2], strict=False))
        return opts.get("--served-model-name") or opts.get("--model", "")

    def option(self, name: str, default: str = "") -> str:
        """The value of one vLLM argument, e.g. option("--tensor-parallel-size")."""
        opts = dict(zip(self.args[::2], self.args[1::2], strict=False))
        return opts.get(name, default)

    def run_argv(self) -> list[str]:
        """The argv after `docker` that starts this container (real docker and the lab's)."""
        argv = ["run", "-d", "--name", self.name]
        if self.gpus is not None:
            argv += ["--gpus", self.gpus.flag()]
        argv += ["--restart", self.restart]
        if self.ipc:
            argv += ["--ipc", self.ipc]
        if self.host_port:
            argv += ["-p", f"{self.host_port}:{VLLM_PORT}"]
        for bind in self.volumes:
            argv += ["-v", bind]
        return [*argv, self.image, *self.args]

    def command(self) -> str:
        """The whole `docker run ...` line, shell-quoted (for logs and the approval form)."""
        return shlex.join(["docker", *self.run_argv()])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (snapshots, the change set)."""
        return {"host": self.host, "name": self.name, "image": self.image,
                "args": list(self.args),
                "gpus": self.gpus.to_json() if self.gpus is not None else None,
                "host_port": self.host_port, "restart": self.restart, "ipc": self.ipc,
                "volumes": list(self.volumes)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Container:
        """Inverse of `to_dict`."""
        gpus = data.get("gpus")
        port = data.get("host_port")
        return cls(str(data["host"]), str(data["name"]), str(data["image"]),
                   tuple(str(a) for a in data.get("args") or ()),
                   Gpus.from_json(gpus) if gpus is not None else None,
                   int(port) if port else None, str(data.get("restart") or "no"),
                   _ipc(data.get("ipc")), tuple(str(v) for v in data.get("volumes") or ()))

    @classmethod
    def from_run_argv(cls, host: str, argv: Sequence[str]) -> Container:
        """The container a `docker run ...` argv (without the leading `docker`) starts.
        Raises ValueError when it has no --name or no image."""
        items = list(argv[1:] if argv[:1] == ["run"] else argv)
        opts: dict[str, list[str]] = {}
        i = 0
        while i < len(items) and items[i].startswith("-"):
            key, eq, value = items[i].partition("=")
            if key in _VALUED and not eq:
                i += 1
                value = items[i] if i < len(items) else ""
            if key in _VALUED:
                opts.setdefault(_ALIASES.get(key, key), []).append(value)
            i += 1
        if i >= len(items) or "--name" not in opts:
            raise ValueError(f"docker run argv needs --name and an image: {shlex.join(argv)}")
        gpus = opts.get("--gpus")
        return cls(host, opts["--name"][-1], items[i], tuple(items[i + 1:]),
                   Gpus.parse_flag(gpus[-1]) if gpus else None,
                   _published(opts.get("-p", [])), (opts.get("--restart") or ["no"])[-1],
                   _ipc(opts["--ipc"][-1] if "--ipc" in opts else None),
                   tuple(opts.get("-v", [])))

    @classmethod
    def from_inspect(cls, host: str, obj: Mapping[str, Any]) -> LiveContainer:
        """One object of `docker inspect`'s JSON array, with whether it runs."""
        host_cfg = obj.get("HostConfig") or {}
        config = obj.get("Config") or {}
        requests = host_cfg.get("DeviceRequests") or []
        gpus = None
        if requests:
            ids = tuple(str(d) for d in requests[0].get("DeviceIDs") or ())
            gpus = Gpus(ids, 0 if ids else int(requests[0].get("Count") or 0))
        container = cls(
            host, str(obj.get("Name", "")).lstrip("/"), str(config.get("Image", "")),
            tuple(str(a) for a in config.get("Cmd") or ()), gpus,
            _bound_port(host_cfg.get("PortBindings") or {}),
            (host_cfg.get("RestartPolicy") or {}).get("Name") or "no",
            _ipc(host_cfg.get("IpcMode")), tuple(host_cfg.get("Binds") or ()))
        return LiveContainer(container, bool((obj.get("State") or {}).get("Running")))


_ALIASES = {"--publish": "-p", "--volume": "-v", "--env": "-e"}


def _ipc(mode: str | None) -> str | None:
    """A non-default IPC mode ("host"), or None for docker's own defaults."""
    return None if mode is None or mode in _DEFAULT_IPC else str(mode)


def _published(values: Sequence[str]) -> int | None:
    """The host port of the first `-p HOST:CONTAINER[/proto]` (vLLM's), or None."""
    if not values:
        return None
    parts = values[0].split("/")[0].split(":")
    return int(parts[-2]) if len(parts) >= 2 and parts[-2].isdigit() else None


def _bound_port(bindings: Mapping[str, Any]) -> int | None:
    """The host port bound to vLLM's container port (else to the first one bound)."""
    binding = bindings.get(f"{VLLM_PORT}/tcp") or next(iter(bindings.values()), None) or [{}]
    port = str((binding[0] or {}).get("HostPort") or "")
    return int(port) if port.isdigit() else None


@dataclass(frozen=True)
class LiveContainer:
    """A container as `docker inspect` found it on its host."""

    container: Container
    running: bool

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: the container's fields plus `running`."""
        return {**self.container.to_dict(), "running": self.running}


def differences(current: Container, wanted: Container) -> list[str]:
    """The COMPARED_FIELDS in which `current` is not `wanted` (empty: the same server)."""
    return [f for f in COMPARED_FIELDS if getattr(current, f) != getattr(wanted, f)]

