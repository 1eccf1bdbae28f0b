"""A dcgm-exporter for the lab's simulated GPU hosts: `python -m lab.gpu_exporter --port P
--lab-dir D`.

Serves GET /metrics with dcgm-exporter's names (DCGM_FI_DEV_GPU_UTIL, _FB_USED, _FB_FREE,
_POWER_USAGE, _GPU_TEMP) and labels (gpu, UUID, device="nvidia<i>", modelName, Hostname) for
every GPU in every `<lab>/hosts/*/gpus.json`. Load comes from the host's gpu_load.json (written by
the vLLM simulator) while it is fresh (updated within 10 s); otherwise the GPU is idle.
`gpu_readings` is the pure function behind it, shared with the nvidia-smi shim.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any

from phasegate.lab.control import JsonFile, read_gpus
from phasegate.lab.gpu_model import gpu_spec
from phasegate.lab.layout import LabLayout

__all__ = ["GpuReading", "gpu_readings", "host_names", "main", "render_metrics"]

STALE_SECONDS = 10.0
IDLE_MEMORY_MIB = 1
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass(frozen=True)
class GpuReading:
    """One GPU at one moment, as nvidia-smi and dcgm-exporter report it."""

    index: int
    name: str
    uuid: str
    memory_total_mib: int
    memory_used_mib: int
    utilization: int
    temperature_c: int
    power_draw_w: float
    power_limit_w: float
    fan_percent: int
    pstate: str

    @property
    def memory_free_mib(self) -> int:
        """Total minus used."""
        return self.memory_total_mib - self.memory_used_mib

    @property
    def bus_id(self) -> str:
        """PCI bus id like nvidia-smi prints it."""
        return f"00000000:{self.index + 1:02X}:00.0"


def _load_entries(layout: LabLayout, host: str, now: float) -> dict[int, dict[str, Any]]:
    """{index: entry} of the host's gpu_load.json; empty when missing, invalid or stale."""
    data = JsonFile(layout.gpu_load_file(host), {}).read()
    if not isinstance(data, dict):
        return {}
    try:
        if now - float(data.get("updated", 0) or 0) > STALE_SECONDS:
            return {}
        return {int(e["index"]): e for e in data.get("gpus") or []
                if isinstance(e, dict) and "index" in e}
    except (TypeError, ValueError):
        return {}


def _reading(gpu: dict[str, Any], entry: dict[str, Any]) -> GpuReading:
    """Power ~22 W idle (+10 W with memory held) up to ~0.9 x TDP at 100 %; temp 33-78 C."""
    idx, total, name = int(gpu["index"]), int(gpu["memory_total_mib"]), str(gpu["name"])
    util = max(0, min(100, round(float(entry.get("utilization", 0) or 0))))
    used = max(IDLE_MEMORY_MIB, min(total, int(entry.get("memory_used_mib", 0) or 0)))
    limit = float(gpu_spec(name, total).tdp_w)
    busy = used > IDLE_MEMORY_MIB or util > 0
    power = 22.0 + (10.0 if busy else 0.0) + (limit - 40.0) * util / 100.0 * 0.9
    return GpuReading(
        index=idx, name=name, uuid=str(gpu.get("uuid", f"GPU-{idx}")), memory_total_mib=total,
        memory_used_mib=used, utilization=util, temperature_c=round(33 + util * 0.45),
        power_draw_w=round(power + (idx % 3) * 0.37, 2), power_limit_w=limit,
        fan_percent=30 + round(util * 0.4), pstate="P2" if busy else "P8")


def gpu_readings(layout: LabLayout, host: str, now: float | None = None) -> list[GpuReading]:
    """Readings of every GPU installed in `host` (gpus.json), loaded from gpu_load.json when it
    was updated within 10 s of `now` (default: the current time), idle otherwise."""
    now = time.time() if now is None else now
    load = _load_entries(layout, host, now)
    out = []
    for gpu in read_gpus(layout, host):
        try:
            out.append(_reading(gpu, load.get(int(gpu["index"]), {})))
        except (KeyError, TypeError, ValueError):
            continue  # a malformed inventory entry is not a GPU
    return out


def host_names(layout: LabLayout) -> list[str]:
    """Hosts that have a GPU inventory, sorted."""
    if not layout.hosts_dir.is_dir():
        return []
    return sorted(p.parent.name for p in layout.hosts_dir.glob("*/gpus.json"))


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", "utilization"),
    ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", "memory_used_mib"),
    ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", "memory_free_mib"),
    ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", "power_draw_w"),
    ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", "temperature_c"),
)


def render_metrics(readings: Iterable[tuple[str, GpuReading]]) -> str:
    """dcgm-exporter text for (host, reading) pairs."""
    rows = list(readings)
    lines: list[str] = []
    for metric, doc, attr in _FIELDS:
        lines += [f"# HELP {metric} {doc}", f"# TYPE {metric} gauge"]
        for host, g in rows:
            labels = (f'gpu="{g.index}",UUID="{_escape(g.uuid)}",device="nvidia{g.index}",'
                      f'modelName="{_escape(g.name)}",Hostname="{_escape(host)}"')
            lines.append(f"{metric}{{{labels}}} {getattr(g, attr)}")
    return "\n".join(lines) + "\n"


def collect(layout: LabLayout, now: float | None = None) -> str:
    """The /metrics body for every host of the lab."""
    now = time.time() if now is None else now
    return render_metrics((h, g) for h in host_names(layout) for g in gpu_readings(layout, h, now))


def make_handler(layout: LabLayout) -> type[BaseHTTPRequestHandler]:
    """A keep-alive handler (Nagle off) serving /metrics and /health."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, collect(layout).encode(), CONTENT_TYPE)
            elif path in ("/", "/health"):
                self._send(200, b"OK\n", "text/plain")
            else:
                self._send(404, b"not found\n", "text/plain")

        def _send(self, status: int, body: bytes, ctype: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            return  # no access log

    return Handler


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT; exit 0."""
    p = argparse.ArgumentParser(prog="python -m lab.gpu_exporter")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--lab-dir", required=True)
    p.add_argument("--host", default="127.0.0.1")
    ns = p.parse_args(argv)
    layout = LabLayout(Path(ns.lab_dir).expanduser().resolve())
    server = ThreadingHTTPServer((ns.host, ns.port), make_handler(layout))
    server.daemon_threads = True

    def stop(sig: int, frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"gpu_exporter: serving DCGM metrics on http://{ns.host}:{ns.port}/metrics", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    print("gpu_exporter: stopped", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
