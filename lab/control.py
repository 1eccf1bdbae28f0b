"""Lab controls as small JSON files: faults, traffic rate, GPU inventories.

Files (not admin HTTP endpoints) because simulators restart (the docker shim replaces the vLLM
"container") and must keep seeing the same knobs. Writers replace files atomically; readers
re-read a file only when its mtime changed (`JsonFile`), so polling per request is cheap.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from pathlib import Path
from typing import Any

from phasegate.lab.layout import LabLayout

__all__ = [
    "DEFAULT_GPU_MODEL",
    "FAULTS",
    "JsonFile",
    "clear_faults",
    "read_faults",
    "read_gpus",
    "read_traffic_rate",
    "set_fault",
    "set_gpu_count",
    "set_traffic_rate",
    "read_settings",
    "set_setting",
    "settings_file",
    "write_json_atomic",
]

# component -> faults it understands. Parameters are optional floats.
FAULTS: dict[str, dict[str, str]] = {
    "vllm": {
        "slow": "multiply every latency by `factor` (default 5)",
        "erroring": "answer a share `rate` (default 0.5) of generation requests with HTTP 500",
        "never-healthy": "/health answers 503 forever (the model never finishes loading)",
    },
    "api": {
        "slow": "add `ms` (default 500) to every request",
        "erroring": "answer a share `rate` (default 0.2) of requests with HTTP 503",
    },
    "compute": {
        "stockout": "instances.insert ends in ZONE_RESOURCE_POOL_EXHAUSTED",
    },
    "cloudrun": {
        "erroring": "services.patch answers HTTP 503",
    },
}

# 48 GB class: Llama-2-13b in fp16 (26 GB of weights) fits one card, as phase 1 needs.
DEFAULT_GPU_MODEL = {"name": "NVIDIA RTX A6000", "memory_total_mib": 49140}


def write_json_atomic(path: Path, data: Any) -> None:
    """Write JSON to `path` so that readers never see a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh, indent=2, sort_keys=True)
    os.replace(tmp, path)


class JsonFile:
    """A JSON file re-read only when it changed; `default` while it is missing or invalid."""

    def __init__(self, path: Path, default: Any) -> None:
        self.path, self.default = path, default
        self._stamp: tuple[int, int] | None = None
        self._value: Any = default

    def read(self) -> Any:
        """The current content (cached until the file's mtime or size changes)."""
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._value = None, self.default
            return self._value
        stamp = (st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                self._value = json.loads(self.path.read_text())
            except (OSError, ValueError):
                return self._value  # a concurrent writer; keep the last good value
            self._stamp = stamp
        return self._value


def read_faults(layout: LabLayout) -> dict[str, dict[str, dict[str, float]]]:
    """{component: {fault: params}} currently set."""
    data = JsonFile(layout.faults_file, {}).read()
    return data if isinstance(data, dict) else {}


def set_fault(layout: LabLayout, component: str, fault: str, **params: float) -> None:
    """Switch a fault on (see FAULTS). Raises ValueError for an unknown component/fault."""
    if fault not in FAULTS.get(component, {}):
        known = ", ".join(f"{c}:{f}" for c, fs in FAULTS.items() for f in fs)
        raise ValueError(f"unknown fault {component}:{fault} (known: {known})")
    faults = read_faults(layout)
    faults.setdefault(component, {})[fault] = dict(params)
    write_json_atomic(layout.faults_file, faults)


def clear_faults(layout: LabLayout, component: str | None = None) -> None:
    """Clear every fault, or only those of one component."""
    faults = read_faults(layout)
    if component is None:
        faults = {}
    else:
        faults.pop(component, None)
    write_json_atomic(layout.faults_file, faults)


def read_traffic_rate(layout: LabLayout) -> float:
    """Requests per second the traffic driver should send (0 = idle)."""
    data = JsonFile(layout.traffic_file, {"rate": 0.0}).read()
    return float(data.get("rate", 0.0)) if isinstance(data, dict) else 0.0


def set_traffic_rate(layout: LabLayout, rate: float) -> None:
    """Set the steady user load of the traffic driver (requests per second, >= 0)."""
    if rate < 0:
        raise ValueError("traffic rate must be >= 0")
    write_json_atomic(layout.traffic_file, {"rate": float(rate)})


def read_gpus(layout: LabLayout, host: str) -> list[dict[str, Any]]:
    """The GPUs installed in `host`: [{index, name, memory_total_mib, uuid}], possibly empty."""
    data = JsonFile(layout.gpus_file(host), []).read()
    return list(data) if isinstance(data, list) else []


def set_gpu_count(layout: LabLayout, host: str, count: int) -> list[dict[str, Any]]:
    """Install or remove GPUs so that `host` has `count`; existing GPUs keep their UUIDs."""
    if count < 0 or count > 8:
        raise ValueError("a lab GPU host holds 0..8 GPUs")
    if not layout.host_dir(host).is_dir():
        raise ValueError(f"unknown GPU host {host!r}")
    gpus = read_gpus(layout, host)[:count]
    while len(gpus) < count:
        gpus.append({"index": len(gpus), **DEFAULT_GPU_MODEL, "uuid": f"GPU-{uuid.uuid4()}"})
    write_json_atomic(layout.gpus_file(host), gpus)
    return gpus


DEFAULT_SETTINGS: dict[str, float] = {"vllm_load_seconds": 3.0}


def settings_file(layout: LabLayout) -> Path:
    """control/settings.json: lab-wide simulator settings (e.g. vLLM model-load time)."""
    return layout.control_dir / "settings.json"


def read_settings(layout: LabLayout) -> dict[str, float]:
    """Lab-wide simulator settings merged over DEFAULT_SETTINGS."""
    data = JsonFile(settings_file(layout), {}).read()
    return {**DEFAULT_SETTINGS, **(data if isinstance(data, dict) else {})}


def set_setting(layout: LabLayout, key: str, value: float) -> None:
    """Change one lab-wide setting (keys of DEFAULT_SETTINGS only)."""
    if key not in DEFAULT_SETTINGS:
        raise ValueError(f"unknown lab setting {key!r} (known: {', '.join(DEFAULT_SETTINGS)})")
    data = {k: v for k, v in read_settings(layout).items()}
    data[key] = float(value)
    write_json_atomic(settings_file(layout), data)
