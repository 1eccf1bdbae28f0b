"""Parse what `nvidia-smi` prints into typed GPU records (pure)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GPU_QUERY_FIELDS", "GpuInfo", "parse_query_gpu_csv"]

# The fields phasegate asks for, in this order (`--format=csv,noheader,nounits`).
GPU_QUERY_FIELDS = ("index", "name", "memory.total", "memory.used", "utilization.gpu", "uuid")


@dataclass(frozen=True)
class GpuInfo:
    """One GPU as nvidia-smi reports it."""

    index: int
    name: str
    memory_total_mib: int
    memory_used_mib: int
    utilization_pct: float
    uuid: str


def parse_query_gpu_csv(text: str) -> list[GpuInfo]:
    """Parse `nvidia-smi --query-gpu=<GPU_QUERY_FIELDS> --format=csv,noheader,nounits`.

    Raises ValueError naming the line when a row does not have the expected shape."""
    gpus = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        cells = [c.strip() for c in line.split(",")]
        if len(cells) != len(GPU_QUERY_FIELDS):
            raise ValueError(f"nvidia-smi line {n}: expected {len(GPU_QUERY_FIELDS)} fields: "
                             f"{line!r}")
        try:
            gpus.append(GpuInfo(int(cells[0]), cells[1], int(float(cells[2])),
                                int(float(cells[3])), float(cells[4]), cells[5]))
        except ValueError as exc:
            raise ValueError(f"nvidia-smi line {n}: {exc}: {line!r}") from exc
    return gpus
