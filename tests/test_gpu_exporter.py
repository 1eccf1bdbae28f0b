"""The DCGM-named GPU exporter (lab.gpu_exporter): pure readings and the real process."""

from __future__ import annotations

import re
import sys
import time
from pathlib import Path

import httpx

from phasegate.lab.control import set_gpu_count, write_json_atomic
from phasegate.lab.gpu_exporter import gpu_readings
from phasegate.lab.layout import LabLayout
from phasegate.lab.procs import free_port, spawn, stop_pid, wait_for

ROOT = Path(__file__).resolve().parents[1]


def make_lab(root: Path) -> LabLayout:
    """gpu-1 with 2 GPUs (GPU 1 loaded), gpu-2 with none."""
    layout = LabLayout(root)
    layout.ensure()
    for host, count in (("gpu-1", 2), ("gpu-2", 0)):
        layout.host_dir(host).mkdir(parents=True, exist_ok=True)
        set_gpu_count(layout, host, count)
    return layout


def write_load(layout: LabLayout, updated: float) -> None:
    """GPU 1 of gpu-1 at 80 % with 44,000 MiB used."""
    write_json_atomic(layout.gpu_load_file("gpu-1"), {"updated": updated, "gpus": [
        {"index": 1, "utilization": 80.4, "memory_used_mib": 44000}]})


def test_readings_fresh_stale_and_empty(tmp_path: Path) -> None:
    layout = make_lab(tmp_path)
    now = time.time()
    write_load(layout, now - 2)
    g0, g1 = gpu_readings(layout, "gpu-1", now)
    assert (g0.index, g0.utilization, g0.memory_used_mib) == (0, 0, 1)
    assert (g1.index, g1.utilization, g1.memory_used_mib) == (1, 80, 44000)
    assert g1.memory_free_mib == g1.memory_total_mib - 44000 == 49140 - 44000
    assert g1.name == "NVIDIA RTX A6000" and g1.uuid.startswith("GPU-")
    assert g0.power_draw_w < 25 and 200 < g1.power_draw_w <= 300
    assert g1.temperature_c > g0.temperature_c
    stale = gpu_readings(layout, "gpu-1", now + 30)
    assert [g.utilization for g in stale] == [0, 0]
    assert gpu_readings(layout, "gpu-2", now) == []
    assert gpu_readings(layout, "no-such-host", now) == []


def test_exporter_serves_dcgm_names_for_every_host(tmp_path: Path) -> None:
    layout = make_lab(tmp_path)
    write_load(layout, time.time() + 20)  # stays fresh for the whole test
    port = free_port()
    argv = [sys.executable, "-m", "phasegate.lab.gpu_exporter", "--port", str(port),
            "--lab-dir", str(layout.root)]
    pid = spawn(argv, layout.logs_dir / "gpu_exporter.log", cwd=ROOT)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for(lambda: httpx.get(url, timeout=2).status_code == 200, 10, what="exporter")
        with httpx.Client(timeout=2) as client:  # keep-alive: Nagle must not add 40 ms
            t0 = time.monotonic()
            for _ in range(20):
                text = client.get(url).text
            per_request = (time.monotonic() - t0) / 20
    finally:
        assert stop_pid(pid, timeout=5)
    uuids = {g.index: g.uuid for g in gpu_readings(layout, "gpu-1")}
    for name in ("DCGM_FI_DEV_GPU_UTIL", "DCGM_FI_DEV_FB_USED", "DCGM_FI_DEV_FB_FREE",
                 "DCGM_FI_DEV_POWER_USAGE", "DCGM_FI_DEV_GPU_TEMP"):
        assert f"# TYPE {name} gauge" in text
        assert len(re.findall(rf"^{name}{{", text, re.M)) == 2, name
    labels = (f'gpu="1",UUID="{uuids[1]}",device="nvidia1",modelName="NVIDIA RTX A6000",'
              f'Hostname="gpu-1"')
    assert f"DCGM_FI_DEV_GPU_UTIL{{{labels}}} 80" in text
    assert f"DCGM_FI_DEV_FB_USED{{{labels}}} 44000" in text
    assert f"DCGM_FI_DEV_FB_FREE{{{labels}}} 5140" in text
    assert 'device="nvidia0"' in text and 'Hostname="gpu-2"' not in text
    assert per_request < 0.03, per_request
