"""Backfilled Prometheus history: the world's 5-minute slots as OpenMetrics, loaded by promtool.

`write_openmetrics(path, world, labels, end)` writes every series the live scrape produces
(jobs api-server, vllm, gpu, redis, postgres, node, lab-disk; same names as `policy.metrics`,
same labels as the live targets and the real exporters give) from the first slot of the world
up to `end` (the lab passes `now - 1 minute`, so the history never overlaps the head block the
live scrape fills). `load_history(path, tsdb_dir)` runs
`promtool tsdb create-blocks-from openmetrics --max-block-duration=720h` into Prometheus' data
directory BEFORE Prometheus starts.

Conventions: a counter sample at time t counts everything up to t; slot i of the world covers
(t_i - 300 s, t_i], so `rate(x[10m])` at t_i reflects slots i-1 and i. Counters start at 0 at the
first slot and only grow (cumulative floor of the expected counts, so bucket <= count holds).
`dreamseed_daily_active_users` is the local day's distinct active users so far (it resets at
local midnight; `max_over_time(...[1d])` evaluated at the end of a day gives that day's DAU).
The API latency histogram mixes GET /v1/questions and POST /v1/feedback (1.8x slower, 15 % of
requests) as lognormals chosen per slot so that
`histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[10m])))`
equals the world's `api_p95_ms` (up to bucket interpolation).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import IO, Any

import numpy as np
import pandas as pd

from phasegate.errors import LabError
from phasegate.lab.disk_exporter import PG_DEVICE, PG_FSTYPE, PG_MOUNTPOINT
from phasegate.lab.monitoring import APP_DB_OID
from phasegate.lab.world import (
    FEEDBACK_SHARE,
    GPU_FB_TOTAL_MIB,
    REDIS_MAX_BYTES,
    SLOT_S,
    World,
    norm_cdf,
)

__all__ = ["API_BUCKETS", "VLLM_BUCKETS", "HistoryLabels", "load_history", "write_openmetrics"]

API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0)
VLLM_BUCKETS = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0,
                60.0)
API_SIGMA = 0.55            # lognormal shape of API latencies
FEEDBACK_SLOWDOWN = 1.8     # POST /v1/feedback median vs GET /v1/questions median
QUEUE_SIGMA = 1.0           # LLM queue wait lognormal shape (p95 = median * e^1.645)
E2E_SIGMA = 0.45
PROMTOOL = "promtool"
BLOCK_S = 720 * 3600         # promtool --max-block-duration, blocks aligned to multiples

_HANDLERS = (("/v1/questions", "GET"), ("/v1/feedback", "POST"))
_FS_SIZE = 100 * 2**30


@dataclass(frozen=True)
class HistoryLabels:
    """Target labels of the live scrape that the history must carry too."""

    api_instance: str = "127.0.0.1:8080"
    vllm_instance: str = "127.0.0.1:8000"
    gpu_instance: str = "127.0.0.1:9400"
    redis_instance: str = "127.0.0.1:9121"
    postgres_instance: str = "127.0.0.1:9187"
    node_instance: str = "127.0.0.1:9100"
    disk_instance: str = "127.0.0.1:9101"
    gpu_host: str = "gpu-1"
    gpu_uuid: str = "GPU-5f1c0c4e-8c3d-4d7e-9a51-0c6f3b1e2a77"
    gpu_model: str = "NVIDIA RTX A6000"
    model_name: str = "Llama-2-13b-chat-hf"
    datname: str = "dreamseed"
    datid: str = str(APP_DB_OID)
    pg_server: str = "127.0.0.1:5432"   # postgres_exporter 0.11 labels series server=host:port
    net_device: str = "eth0"    # the machine's NIC, as node_exporter names it

    @classmethod
    def for_lab(cls, ports: Mapping[str, int], gpus: Sequence[Mapping[str, Any]] = (),
                host: str = "gpu-1", net_device: str = "eth0") -> HistoryLabels:
        """Labels for a lab whose parts listen on `ports` (supervisor port names), whose
        `host` has the GPU inventory `gpus` (first GPU's uuid and name) and whose network
        interface (node_exporter's device label) is `net_device`."""
        def inst(key: str, default: str) -> str:
            return f"127.0.0.1:{ports[key]}" if key in ports else default

        base = cls()
        gpu = gpus[0] if gpus else {}
        return cls(api_instance=inst("api", base.api_instance),
                   vllm_instance=inst(f"vllm:{host}", base.vllm_instance),
                   gpu_instance=inst("gpu_exporter", base.gpu_instance),
                   redis_instance=inst("redis_exporter", base.redis_instance),
                   postgres_instance=inst("postgres_exporter", base.postgres_instance),
                   node_instance=inst("node_exporter", base.node_instance),
                   disk_instance=inst("disk_exporter", base.disk_instance),
                   pg_server=inst("postgres", base.pg_server), gpu_host=host,
                   gpu_uuid=str(gpu.get("uuid", base.gpu_uuid)),
                   gpu_model=str(gpu.get("name", base.gpu_model)), net_device=net_device)


# ---------------------------------------------------------------- series values

def _counter(per_slot: np.ndarray) -> np.ndarray:
    """Integer counter values from expected per-slot increments (monotonic, starts ~0)."""
    return np.floor(np.cumsum(per_slot) + 1e-9).astype(np.int64)


def _solve_mu(p95: np.ndarray) -> np.ndarray:
    """Log-median of GET latencies so the questions+feedback mixture has this 95th pct."""
    target = np.log(p95)
    lo, hi = target - 6 * API_SIGMA, target
    shift = math.log(FEEDBACK_SLOWDOWN)
    for _ in range(40):
        mu = (lo + hi) / 2
        cdf = ((1 - FEEDBACK_SHARE) * norm_cdf((target - mu) / API_SIGMA)
               + FEEDBACK_SHARE * norm_cdf((target - mu - shift) / API_SIGMA))
        lo, hi = np.where(cdf > 0.95, mu, lo), np.where(cdf > 0.95, hi, mu)
    return (lo + hi) / 2


def _histogram(n: np.ndarray, mu: np.ndarray, sigma: float, buckets: Sequence[float]
               ) -> dict[str, np.ndarray]:
    """Cumulative bucket/count/sum series for lognormal(mu, sigma) observations, n per slot."""
    out: dict[str, np.ndarray] = {}
    for le in buckets:
        out[repr(float(le))] = _counter(n * norm_cdf((math.log(le) - mu) / sigma))
    out["+Inf"] = _counter(n)
    out["_count"] = out["+Inf"]
    out["_sum"] = np.cumsum(n * np.exp(mu + sigma**2 / 2))
    return out


@dataclass
class _Family:
    name: str               # family name (counters: without _total)
    kind: str               # gauge | counter | histogram | unknown
    help: str
    series: list[tuple[str, dict[str, str], np.ndarray]]   # (sample name, labels, values)


def _api_families(s: pd.DataFrame, job: dict[str, str]) -> list[_Family]:
    n = s["rps"].to_numpy() * SLOT_S
    mu_q = _solve_mu(s["api_p95_ms"].to_numpy() / 1000.0)
    err = s["error_rate"].to_numpy()
    dur, req = [], []
    for (handler, method), share, mu in zip(_HANDLERS, (1 - FEEDBACK_SHARE, FEEDBACK_SHARE),
                                            (mu_q, mu_q + math.log(FEEDBACK_SLOWDOWN)),
                                            strict=True):
        lab = {**job, "handler": handler, "method": method}
        dur += _hist_series("http_request_duration_seconds", lab,
                            _histogram(n * share, mu, API_SIGMA, API_BUCKETS))
        for status, frac in (("200", 1 - err), ("500", err)):
            req.append(("http_requests_total", {**lab, "status": status},
                        _counter(n * share * frac)))
    lookups = n * (1 - FEEDBACK_SHARE)
    miss = s["cache_miss_rate"].to_numpy()
    return [
        _gauge("dreamseed_registered_users", "Registered users", job, s["users_total"]),
        _gauge("dreamseed_daily_active_users", "Active users today (local day)", job,
               s["dau_so_far"]),
        _Family("http_request_duration_seconds", "histogram", "HTTP request latency", dur),
        _Family("http_requests", "counter", "HTTP requests", req),
        _one_counter("api_cache_hits", "Response cache hits", job, lookups * (1 - miss)),
        _one_counter("api_cache_misses", "Response cache misses", job, lookups * miss),
        _gauge("api_active_connections", "In-flight API requests", job,
               np.round(s["active_connections"].to_numpy())),
    ]


def _vllm_families(s: pd.DataFrame, job: dict[str, str]) -> list[_Family]:
    n = s["llm_rps"].to_numpy() * SLOT_S
    q_mu = np.log(s["queue_p95_s"].to_numpy()) - 1.645 * QUEUE_SIGMA
    e2e_mu = np.log(s["e2e_median_s"].to_numpy())
    return [
        _Family("vllm:request_queue_time_seconds", "histogram", "Request queue time",
                _hist_series("vllm:request_queue_time_seconds", job,
                             _histogram(n, q_mu, QUEUE_SIGMA, VLLM_BUCKETS))),
        _Family("vllm:e2e_request_latency_seconds", "histogram", "End-to-end request latency",
                _hist_series("vllm:e2e_request_latency_seconds", job,
                             _histogram(n, e2e_mu, E2E_SIGMA, VLLM_BUCKETS))),
        _gauge("vllm:num_requests_running", "Requests running", job,
               np.round(s["vllm_running"].to_numpy())),
        _gauge("vllm:num_requests_waiting", "Requests waiting", job,
               np.round(s["vllm_waiting"].to_numpy())),
        _gauge("vllm:kv_cache_usage_perc", "KV cache usage (1 = 100 %)", job,
               s["kv_cache_usage"]),
    ]


def _dcgm_families(s: pd.DataFrame, job: dict[str, str]) -> list[_Family]:
    return [_gauge("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (%)", job,
                   np.round(s["gpu_util"].to_numpy())),
            _gauge("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (MiB)", job,
                   np.minimum(s["fb_used_mib"].to_numpy(), GPU_FB_TOTAL_MIB))]


def _redis_families(s: pd.DataFrame, job: dict[str, str]) -> list[_Family]:
    return [_gauge("redis_memory_used_bytes", "Redis used memory", job,
                   np.round(s["redis_used_bytes"].to_numpy())),
            _gauge("redis_memory_max_bytes", "Redis maxmemory", job,
                   np.full(len(s), float(REDIS_MAX_BYTES)))]


def _postgres_families(s: pd.DataFrame, job: dict[str, str], lb: HistoryLabels
                       ) -> list[_Family]:
    tps = s["db_tps"].to_numpy() * SLOT_S
    db = {**job, "datid": lb.datid, "datname": lb.datname, "server": lb.pg_server}
    return [_untyped("pg_stat_database_xact_commit", "Transactions committed", db,
                     _counter(tps * 0.996)),
            _untyped("pg_stat_database_xact_rollback", "Transactions rolled back", db,
                     _counter(tps * 0.004))]


def _node_families(s: pd.DataFrame, job: dict[str, str], lb: HistoryLabels) -> list[_Family]:
    net, rps = {**job, "device": lb.net_device}, s["rps"].to_numpy() * SLOT_S
    return [_one_counter("node_network_receive_bytes", "Bytes received", net, rps * 2_500.0),
            _one_counter("node_network_transmit_bytes", "Bytes sent", net, rps * 18_000.0)]


def _disk_families(s: pd.DataFrame, job: dict[str, str]) -> list[_Family]:
    """The simulated PostgreSQL volume, with the labels lab.disk_exporter gives it."""
    fs = {**job, "device": PG_DEVICE, "fstype": PG_FSTYPE, "mountpoint": PG_MOUNTPOINT}
    grow = np.linspace(0.0, 1.0, len(s))
    return [_gauge("node_filesystem_size_bytes", "Filesystem size", fs, np.full(len(s), _FS_SIZE)),
            _gauge("node_filesystem_avail_bytes", "Filesystem free space", fs,
                   np.round(_FS_SIZE * (0.78 - 0.06 * grow)))]


def _hist_series(base: str, labels: dict[str, str], h: dict[str, np.ndarray]
                 ) -> list[tuple[str, dict[str, str], np.ndarray]]:
    out = [(f"{base}_bucket", {**labels, "le": le}, v) for le, v in h.items()
           if not le.startswith("_")]
    return out + [(f"{base}_count", labels, h["_count"]), (f"{base}_sum", labels, h["_sum"])]


def _gauge(name: str, help_: str, labels: dict[str, str], v: Any) -> _Family:
    return _Family(name, "gauge", help_, [(name, labels, np.asarray(v, dtype=float))])


def _untyped(name: str, help_: str, labels: dict[str, str], v: np.ndarray) -> _Family:
    """A counter whose exporter name has no _total (postgres_exporter): TYPE unknown."""
    return _Family(name, "unknown", help_, [(name, labels, v)])


def _one_counter(family: str, help_: str, labels: dict[str, str], per_slot: np.ndarray
                 ) -> _Family:
    return _Family(family, "counter", help_, [(f"{family}_total", labels, _counter(per_slot))])


# ---------------------------------------------------------------- writing

def _fmt_labels(labels: Mapping[str, str]) -> str:
    esc = (str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
           for v in labels.values())
    return ",".join(f'{k}="{v}"' for k, v in zip(labels, esc, strict=True))


def _fmt_values(v: np.ndarray) -> list[str]:
    if v.dtype.kind in "iu":
        return [str(x) for x in v.tolist()]
    if np.all(np.mod(v, 1.0) == 0) and np.all(np.abs(v) < 2**53):
        return [str(x) for x in v.astype(np.int64).tolist()]
    return [f"{x:.6f}" if x >= 1e5 else f"{x:.6g}" for x in v.tolist()]


def _families(s: pd.DataFrame, lb: HistoryLabels) -> list[_Family]:
    api = {"job": "api-server", "instance": lb.api_instance}
    vllm = {"job": "vllm", "instance": lb.vllm_instance, "host": lb.gpu_host,
            "model_name": lb.model_name, "engine": "0"}
    gpu = {"job": "gpu", "instance": lb.gpu_instance, "gpu": "0", "UUID": lb.gpu_uuid,
           "device": "nvidia0", "modelName": lb.gpu_model, "Hostname": lb.gpu_host}
    return (_api_families(s, api) + _vllm_families(s, vllm) + _dcgm_families(s, gpu)
            + _redis_families(s, {"job": "redis", "instance": lb.redis_instance})
            + _postgres_families(s, {"job": "postgres", "instance": lb.postgres_instance}, lb)
            + _node_families(s, {"job": "node", "instance": lb.node_instance}, lb)
            + _disk_families(s, {"job": "lab-disk", "instance": lb.disk_instance}))


class _Writer:
    """Writes bytes and remembers, per 720h-aligned window, which byte ranges belong to it
    (family headers belong to every window), so `load_history` can cut the file into one
    part per block and run promtool once per part, in parallel (promtool re-reads the whole
    input once per block otherwise)."""

    def __init__(self, fh: IO[bytes], n_windows: int) -> None:
        self.fh, self.offset = fh, 0
        self.ranges: list[list[tuple[int, int]]] = [[] for _ in range(n_windows)]

    def put(self, text: str, windows: Sequence[int]) -> None:
        data = text.encode()
        self.fh.write(data)
        for w in windows:
            self.ranges[w].append((self.offset, len(data)))
        self.offset += len(data)

    def family(self, fam: _Family, ts: list[str], cuts: list[int]) -> int:
        self.put(f"# HELP {fam.name} {fam.help}\n# TYPE {fam.name} {fam.kind}\n",
                 range(len(self.ranges)))
        for sample, labels, values in fam.series:
            prefix = f"{sample}{{{_fmt_labels(labels)}}} "
            lines = [f"{prefix}{v} {t}\n" for v, t in zip(_fmt_values(values), ts, strict=True)]
            for w in range(len(cuts) - 1):
                self.put("".join(lines[cuts[w]:cuts[w + 1]]), [w])
        return len(fam.series) * len(ts)


def _window_cuts(ts: np.ndarray) -> list[int]:
    """Indices where a new promtool block (BLOCK_S-aligned window) starts, plus both ends."""
    w = ts // BLOCK_S
    return [0, *(np.flatnonzero(np.diff(w)) + 1).tolist(), len(ts)]


def _index_path(path: Path) -> Path:
    return path.with_name(path.name + ".blocks.json")


def write_openmetrics(path: str | Path, world: World, labels: HistoryLabels, end: datetime,
                      step_s: int = SLOT_S) -> int:
    """Write the world's history up to `end` (inclusive) as OpenMetrics text; return the number
    of samples. `step_s` must be a multiple of the world's 5-minute slot. Also writes
    `<path>.blocks.json` (byte ranges per TSDB block) that `load_history` uses."""
    if step_s <= 0 or step_s % SLOT_S:
        raise ValueError(f"step_s must be a positive multiple of {SLOT_S}")
    slots = world.slots[world.slots["ts"] <= end.timestamp()].reset_index(drop=True)
    if slots.empty:
        raise ValueError("no world slot ends before `end`")
    keep = slice(None, None, step_s // SLOT_S)
    ts_arr = slots["ts"].to_numpy()[keep]
    ts, cuts, total = [str(t) for t in ts_arr.tolist()], _window_cuts(ts_arr), 0
    path = Path(path)
    with open(path, "wb", buffering=1 << 20) as fh:
        out = _Writer(fh, len(cuts) - 1)
        for fam in _families(slots, labels):
            fam.series = [(n, lab, v[keep]) for n, lab, v in fam.series]
            total += out.family(fam, ts, cuts)
        fh.write(b"# EOF\n")
    _index_path(path).write_text(json.dumps({"size": out.offset + 6, "parts": out.ranges}))
    return total


def _split(path: Path) -> list[Path]:
    """Part files, one per block, cut with the index; [path] if there is no usable index."""
    try:
        index = json.loads(_index_path(path).read_text())
    except (OSError, ValueError):
        return [path]
    if index.get("size") != path.stat().st_size or len(index["parts"]) < 2:
        return [path]
    parts = []
    with open(path, "rb") as src:
        for i, ranges in enumerate(index["parts"]):
            part = path.with_name(f"{path.name}.part{i}")
            with open(part, "wb") as dst:
                for off, length in ranges:
                    src.seek(off)
                    dst.write(src.read(length))
                dst.write(b"# EOF\n")
            parts.append(part)
    return parts


def _promtool(openmetrics: Path, tsdb_dir: Path, timeout_s: float) -> None:
    argv = [PROMTOOL, "tsdb", "create-blocks-from", "openmetrics",
            "--max-block-duration=720h", str(openmetrics), str(tsdb_dir)]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired as exc:
        raise LabError(f"promtool timed out after {timeout_s:.0f}s") from exc
    except OSError as exc:
        raise LabError(f"cannot run promtool: {exc}") from exc
    if proc.returncode != 0:
        raise LabError(f"promtool exited {proc.returncode}: {proc.stderr.strip()[-4000:]}")


def load_history(openmetrics_path: str | Path, tsdb_dir: str | Path,
                 timeout_s: float = 900.0) -> None:
    """Turn the OpenMetrics file into TSDB blocks in `tsdb_dir` (created if missing) with
    `promtool tsdb create-blocks-from openmetrics --max-block-duration=720h`: one promtool per
    720h block in parallel when the writer's index is present, else one run on the whole file.
    Raises LabError with promtool's stderr when it fails."""
    path, tsdb = Path(openmetrics_path), Path(tsdb_dir)
    tsdb.mkdir(parents=True, exist_ok=True)
    parts = _split(path)
    try:
        with ThreadPoolExecutor(max_workers=min(len(parts), os.cpu_count() or 1)) as pool:
            futures = [pool.submit(_promtool, p, tsdb, timeout_s) for p in parts]
        for f in futures:
            f.result()
    finally:
        for p in parts:
            if p != path:
                p.unlink(missing_ok=True)


def _main() -> None:  # pragma: no cover - manual timing helper
    import argparse
    import tempfile
    from datetime import UTC, timedelta

    ap = argparse.ArgumentParser(description="write and load the lab's Prometheus history")
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--dir", default=None)
    args = ap.parse_args()
    now = datetime.now(UTC)
    t = time.perf_counter()
    world = World.build(now, days=args.days)
    t_world = time.perf_counter() - t
    out = Path(args.dir or tempfile.mkdtemp(prefix="history-"))
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    n = write_openmetrics(out / "history.om", world, HistoryLabels(), now - timedelta(minutes=1))
    t_write = time.perf_counter() - t
    t = time.perf_counter()
    load_history(out / "history.om", out / "tsdb")
    print(f"world {t_world:.2f}s, write {n} samples {t_write:.2f}s, "
          f"promtool {time.perf_counter() - t:.2f}s, file {(out / 'history.om').stat().st_size}")


if __name__ == "__main__":  # pragma: no cover
    _main()
