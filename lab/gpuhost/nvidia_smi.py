"""`nvidia-smi` of a simulated GPU host, with the real tool's output formats and exit codes.

The host comes from $PHASEGATE_GPU_HOST and the lab from $PHASEGATE_LAB (both set by the host's
sshd). GPUs come from `<host>/gpus.json` (`lab.control.set_gpu_count`); utilization and memory
from `<host>/gpu_load.json`, written by the vLLM simulator (older than 10 s = idle), read
through `lab.gpu_exporter.gpu_readings` so nvidia-smi and the DCGM exporter agree.

Supported: no arguments (the classic table), `-L/--list-gpus`, `--query-gpu=FIELDS
--format=csv[,noheader][,nounits]`, `--query-compute-apps=FIELDS --format=...`, `-i/--id`.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from phasegate.lab.gpu_exporter import IDLE_MEMORY_MIB, GpuReading, gpu_readings
from phasegate.lab.gpuhost.docker import running_gpu_pids
from phasegate.lab.layout import LabLayout

__all__ = ["CUDA_VERSION", "DRIVER_VERSION", "GpuReading", "gpu_processes", "main", "readings"]

DRIVER_VERSION = "535.129.03"
CUDA_VERSION = "12.2"
EXIT_INVALID = 2
EXIT_NO_DEVICES = 6
EXIT_NO_DRIVER = 9

NO_DRIVER = ("NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver. "
             "Make sure that the latest NVIDIA driver is installed and running.")
BAD_ARGS = "Invalid combination of input arguments. Please run 'nvidia-smi -h' for help."


def readings(layout: LabLayout, host: str, now: float | None = None) -> list[GpuReading]:
    """Current readings of every GPU installed in `host` (shared with the DCGM exporter)."""
    return gpu_readings(layout, host, now)


def gpu_processes(layout: LabLayout, host: str,
                  gpus: Sequence[GpuReading]) -> list[tuple[GpuReading, int, int]]:
    """(gpu, pid, used MiB) of the running "containers" of `host` that hold GPU memory."""
    by_index = {g.index: g for g in gpus}
    out = []
    for pid, indices in running_gpu_pids(layout, host):
        for idx in indices:
            gpu = by_index.get(idx)
            if gpu is not None and gpu.memory_used_mib > IDLE_MEMORY_MIB:
                out.append((gpu, pid, gpu.memory_used_mib))
    return out


def _table(gpus: Sequence[GpuReading], procs: Sequence[tuple[GpuReading, int, int]],
           now: float) -> str:
    """The classic nvidia-smi table (535 driver layout, 89 columns)."""
    sep = "+" + "-" * 41 + "+" + "-" * 22 + "+" + "-" * 22 + "+"
    full = "+" + "-" * 87 + "+"
    head = f" NVIDIA-SMI {DRIVER_VERSION}             Driver Version: {DRIVER_VERSION}   " \
           f"CUDA Version: {CUDA_VERSION}"
    lines = [time.strftime("%a %b %d %H:%M:%S %Y", time.localtime(now)) + "       ", full,
             f"|{head:<87}|", "|" + sep[1:],
             "| GPU  Name                 Persistence-M | Bus-Id        Disp.A |"
             " Volatile Uncorr. ECC |",
             "| Fan  Temp   Perf          Pwr:Usage/Cap |         Memory-Usage |"
             " GPU-Util  Compute M. |",
             "|                                         |                      |"
             "               MIG M. |",
             "|=========================================+======================+"
             "======================|"]
    for g in gpus:
        left = f" {f'{g.fan_percent}%':>3}  {g.temperature_c:>3}C    {g.pstate}"
        power = f"{round(g.power_draw_w)}W / {round(g.power_limit_w)}W "
        lines += [
            f"|{g.index:>4}  {g.name[:29]:<29}  On  | {g.bus_id} Off |{'Off':>21} |",
            f"|{left}{power:>{41 - len(left)}}|"
            f"{f'{g.memory_used_mib}MiB / {g.memory_total_mib}MiB ':>22}|"
            f"{f'{g.utilization}%':>8}{'Default':>13} |",
            f"|{'':41}|{'':22}|{'N/A':>21} |", sep]
    lines += [" " * 89, full, f"|{' Processes:':<87}|",
              f"|{'  GPU   GI   CI        PID   Type   Process name':<76}GPU Memory |",
              f"|{'        ID   ID':<76}Usage      |", "|" + "=" * 87 + "|"]
    if not procs:
        lines.append(f"|{'  No running processes found':<87}|")
    for g, pid, mem in procs:
        left = f"  {g.index:>3}   N/A  N/A  {pid:>8}      C   python3"
        lines.append(f"|{left}{f'{mem}MiB ':>{87 - len(left)}}|")
    lines.append(full)
    return "\n".join(lines)


# field -> (header unit, value function, unit suffix)
_Field = tuple[str, Callable[[GpuReading, float], str], str]
_FIELDS: dict[str, _Field] = {
    "timestamp": ("", lambda g, now: time.strftime("%Y/%m/%d %H:%M:%S", time.localtime(now))
                  + f".{int(now * 1000) % 1000:03d}", ""),
    "driver_version": ("", lambda g, now: DRIVER_VERSION, ""),
    "count": ("", lambda g, now: "", ""),  # filled in by _query_gpu
    "index": ("", lambda g, now: str(g.index), ""),
    "name": ("", lambda g, now: g.name, ""),
    "uuid": ("", lambda g, now: g.uuid, ""),
    "pci.bus_id": ("", lambda g, now: g.bus_id, ""),
    "persistence_mode": ("", lambda g, now: "Enabled", ""),
    "compute_mode": ("", lambda g, now: "Default", ""),
    "pstate": ("", lambda g, now: g.pstate, ""),
    "fan.speed": (" [%]", lambda g, now: str(g.fan_percent), " %"),
    "memory.total": (" [MiB]", lambda g, now: str(g.memory_total_mib), " MiB"),
    "memory.used": (" [MiB]", lambda g, now: str(g.memory_used_mib), " MiB"),
    "memory.free": (" [MiB]", lambda g, now: str(g.memory_free_mib), " MiB"),
    "utilization.gpu": (" [%]", lambda g, now: str(g.utilization), " %"),
    "utilization.memory": (" [%]", lambda g, now: str(round(g.utilization * 0.6)), " %"),
    "temperature.gpu": ("", lambda g, now: str(g.temperature_c), ""),
    "power.draw": (" [W]", lambda g, now: f"{g.power_draw_w:.2f}", " W"),
    "power.limit": (" [W]", lambda g, now: f"{g.power_limit_w:.2f}", " W"),
}
_ALIASES = {"gpu_name": "name", "gpu_uuid": "uuid", "gpu_bus_id": "pci.bus_id"}


def _parse_format(spec: str | None) -> tuple[bool, bool] | None:
    """(header, units) from `csv[,noheader][,nounits]`; None if invalid."""
    if spec is None:
        return None
    parts = [p.strip() for p in spec.split(",")]
    if parts[0] != "csv" or any(p not in ("noheader", "nounits") for p in parts[1:]):
        return None
    return "noheader" not in parts, "nounits" not in parts


def _query_gpu(fields: list[str], gpus: Sequence[GpuReading], fmt: tuple[bool, bool],
               now: float) -> tuple[str, int]:
    """CSV answer of --query-gpu."""
    names = [f.strip() for f in fields if f.strip()]
    for f in names:
        if _ALIASES.get(f.lower(), f.lower()) not in _FIELDS:
            return f'Field "{f}" is not a valid field to query.\n', EXIT_INVALID
    header, units = fmt
    lines = []
    if header:
        lines.append(", ".join(f + _FIELDS[_ALIASES.get(f.lower(), f.lower())][0]
                               for f in names))
    for g in gpus:
        row = []
        for f in names:
            key = _ALIASES.get(f.lower(), f.lower())
            _, fn, unit = _FIELDS[key]
            value = str(len(gpus)) if key == "count" else fn(g, now)
            row.append(value + (unit if units else ""))
        lines.append(", ".join(row))
    return "\n".join(lines), 0


_APP_FIELDS = {"pid": ("", ""), "process_name": ("", ""), "gpu_uuid": ("", ""),
               "gpu_bus_id": ("", ""), "used_memory": (" [MiB]", " MiB"),
               "used_gpu_memory": (" [MiB]", " MiB")}


def _query_apps(fields: list[str], procs: Sequence[tuple[GpuReading, int, int]],
                fmt: tuple[bool, bool]) -> tuple[str, int]:
    """CSV answer of --query-compute-apps."""
    names = [f.strip() for f in fields if f.strip()]
    for f in names:
        if f.lower() not in _APP_FIELDS:
            return f'Field "{f}" is not a valid field to query.\n', EXIT_INVALID
    header, units = fmt
    lines = [", ".join(f + _APP_FIELDS[f.lower()][0] for f in names)] if header else []
    for g, pid, mem in procs:
        values = {"pid": str(pid), "process_name": "python3", "gpu_uuid": g.uuid,
                  "gpu_bus_id": g.bus_id, "used_memory": str(mem), "used_gpu_memory": str(mem)}
        lines.append(", ".join(values[f.lower()] + (_APP_FIELDS[f.lower()][1] if units else "")
                               for f in names))
    return "\n".join(lines), 0


def _select(gpus: list[GpuReading], ids: str | None) -> list[GpuReading] | None:
    """The GPUs named by `-i` (index, UUID or bus id, comma separated); None if one is unknown."""
    if ids is None:
        return gpus
    out = []
    for ident in (i.strip() for i in ids.split(",")):
        match = [g for g in gpus if ident in (str(g.index), g.uuid, g.bus_id)]
        if not match:
            return None
        out += [g for g in match if g not in out]
    return out


@dataclass
class _Args:
    list_gpus: bool = False
    ids: str | None = None
    query_gpu: str | None = None
    query_apps: str | None = None
    fmt: str | None = None


_VALUED = {"-i": "ids", "--id": "ids", "--query-gpu": "query_gpu",
           "--query-compute-apps": "query_apps", "--format": "fmt"}


def _parse(argv: Sequence[str]) -> _Args | None:
    """nvidia-smi's options we support; None on anything else."""
    args, it = _Args(), iter(argv)
    for arg in it:
        key, eq, value = arg.partition("=")
        if arg in ("-L", "--list-gpus"):
            args.list_gpus = True
        elif key in _VALUED:
            if not eq:
                value = next(it, "")
            if not value:
                return None
            setattr(args, _VALUED[key], value)
        elif arg.startswith("-i") and arg[2:]:
            args.ids = arg[2:]
        else:
            return None
    return args


def run(argv: Sequence[str], layout: LabLayout, host: str, now: float) -> tuple[str, int]:
    """(stdout text, exit code) of `nvidia-smi argv` on `host`."""
    args = _parse(argv)
    if args is None:
        return BAD_ARGS, EXIT_INVALID
    all_gpus = readings(layout, host, now)
    if not all_gpus:
        return "No devices were found", EXIT_NO_DEVICES
    gpus = _select(all_gpus, args.ids)
    if gpus is None:
        return "No devices were found", EXIT_NO_DEVICES
    if args.query_gpu is not None or args.query_apps is not None:
        fmt = _parse_format(args.fmt)
        if fmt is None:
            return ("'--format' must be specified as csv[,noheader][,nounits] when querying.\n"
                    + BAD_ARGS), EXIT_INVALID
        if args.query_gpu is not None:
            return _query_gpu(args.query_gpu.split(","), gpus, fmt, now)
        procs = gpu_processes(layout, host, gpus)
        return _query_apps((args.query_apps or "").split(","), procs, fmt)
    if args.list_gpus:
        return "\n".join(f"GPU {g.index}: {g.name} (UUID: {g.uuid})" for g in gpus), 0
    return _table(gpus, gpu_processes(layout, host, gpus), now), 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the host's `nvidia-smi` wrapper."""
    host, lab = os.environ.get("PHASEGATE_GPU_HOST"), os.environ.get("PHASEGATE_LAB")
    if not host or not lab or not LabLayout(Path(lab)).host_dir(host).is_dir():
        print(NO_DRIVER)
        return EXIT_NO_DRIVER
    text, code = run(list(sys.argv[1:] if argv is None else argv), LabLayout(Path(lab)), host,
                     time.time())
    if text:
        sys.stdout.write(text if text.endswith("\n") else text + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
