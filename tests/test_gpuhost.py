"""Simulated GPU hosts over real SSH: sshd per host, host-key checking, nvidia-smi and docker.

Builds its own small lab (two hosts, no other services) in a mkdtemp dir under /tmp, so the
sshd configs take the StrictModes-no branch; one test checks the StrictModes-yes branch with a
lab under the (0700) home directory. Every process started here is stopped by PID.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import paramiko
import pytest

from phasegate.lab.control import set_gpu_count, set_setting
from phasegate.lab.gpuhost.setup import HostSpec, host_public_key, prepare_host, strict_modes_ok
from phasegate.lab.layout import LabLayout
from phasegate.lab.procs import free_port, pid_alive, spawn, stop_pid, wait_for, wait_port

REPO = Path(__file__).resolve().parents[1]
MODEL = "Llama-2-13b-chat-hf"

# A stand-in for lab.vllm_sim, used only when the real simulator cannot be imported.
FAKE_VLLM = '''
import argparse, json, os, signal, sys, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
p = argparse.ArgumentParser()
for a in ("--port", "--host", "--gpu-host", "--lab-dir", "--visible-gpus", "--model"):
    p.add_argument(a)
ns, _ = p.parse_known_args()
if not ns.model or not os.path.isfile(os.path.join(ns.model, "config.json")):
    print(f"model not found: {ns.model}", flush=True)
    sys.exit(1)
gpus = [int(i) for i in (ns.visible_gpus or "").split(",") if i]
load = os.path.join(ns.lab_dir, "hosts", ns.gpu_host, "gpu_load.json")
def write_load():
    while True:
        doc = {"updated": time.time(), "gpus": [{"index": i, "utilization": 0,
               "memory_used_mib": 44000} for i in gpus]}
        with open(load + ".tmp", "w") as fh:
            json.dump(doc, fh)
        os.replace(load + ".tmp", load)
        time.sleep(1)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"ok")
    def log_message(self, *a): pass
srv = ThreadingHTTPServer(("127.0.0.1", int(ns.port)), H)
signal.signal(signal.SIGTERM, lambda *a: sys.exit(0))
threading.Thread(target=write_load, daemon=True).start()
print(f"fake vLLM serving {ns.model} on {ns.port} with GPUs {gpus}", flush=True)
srv.serve_forever()
'''


@dataclass
class GpuLab:
    layout: LabLayout
    hosts: dict[str, HostSpec]
    sshd_pids: list[int]
    entry_prefix: str  # shell prefix selecting the container entrypoint ("" = lab.vllm_sim)


def _vllm_sim_usable() -> bool:
    """True if lab/vllm_sim.py exists and imports (then the tests use the real simulator);
    PHASEGATE_TEST_FAKE_VLLM=1 forces the stand-in."""
    if os.environ.get("PHASEGATE_TEST_FAKE_VLLM") == "1":
        return False
    if not (REPO / "lab" / "vllm_sim.py").exists():
        return False
    proc = subprocess.run([sys.executable, "-c", "import lab.vllm_sim"], capture_output=True,
                          timeout=60, cwd="/")
    return proc.returncode == 0


def _start_sshd(spec: HostSpec, layout: LabLayout) -> int:
    pid = spawn(spec.sshd_argv, layout.logs_dir / f"sshd-{spec.name}.log")
    wait_port(spec.port, timeout=10)
    return pid


def _stop_containers(layout: LabLayout, host: str) -> None:
    for rec_file in layout.containers_dir(host).glob("*.json"):
        rec = json.loads(rec_file.read_text())
        for key in ("pid", "monitor_pid"):
            if rec.get(key):
                stop_pid(int(rec[key]), timeout=5)


@pytest.fixture(scope="module")
def gpu_lab() -> Iterator[GpuLab]:
    """Two prepared GPU hosts (gpu-1: 1 GPU, gpu-2: none) with their sshd running."""
    root = Path(tempfile.mkdtemp(prefix="phasegate-gpuhost-"))
    layout = LabLayout(root / "lab")
    layout.ensure()
    set_setting(layout, "vllm_load_seconds", 0.3)
    hosts: dict[str, HostSpec] = {}
    pids: list[int] = []
    prefix = ""
    if not _vllm_sim_usable():
        (root / "fake").mkdir()
        (root / "fake" / "fake_vllm.py").write_text(FAKE_VLLM)
        prefix = (f"PYTHONPATH={shlex.quote(str(root / 'fake'))} "
                  "PHASEGATE_DOCKER_ENTRYPOINT=fake_vllm ")
    try:
        for name in ("gpu-1", "gpu-2"):
            hosts[name] = prepare_host(layout, name, free_port())
        set_gpu_count(layout, "gpu-1", 1)
        for spec in hosts.values():
            pids.append(_start_sshd(spec, layout))
        yield GpuLab(layout, hosts, pids, prefix)
    finally:
        for name in hosts:
            _stop_containers(layout, name)
        for pid in pids:
            stop_pid(pid, timeout=5)
        assert not [p for p in pids if pid_alive(p)]
        shutil.rmtree(root, ignore_errors=True)


def _connect(spec: HostSpec, known_hosts: Path | None = None) -> paramiko.SSHClient:
    client = paramiko.SSHClient()
    client.load_host_keys(str(known_hosts or spec.known_hosts))
    client.set_missing_host_key_policy(paramiko.RejectPolicy())
    client.connect(hostname="127.0.0.1", port=spec.port, username=spec.user,
                   key_filename=str(spec.key_path), look_for_keys=False, allow_agent=False,
                   timeout=10, banner_timeout=10, auth_timeout=10)
    return client


@pytest.fixture(scope="module")
def clients(gpu_lab: GpuLab) -> Iterator[dict[str, paramiko.SSHClient]]:
    """One SSH connection per host."""
    out = {name: _connect(spec) for name, spec in gpu_lab.hosts.items()}
    yield out
    for c in out.values():
        c.close()


def sh(client: paramiko.SSHClient, command: str, timeout: float = 30) -> tuple[int, str, str]:
    """Run `command` over SSH: (exit status, stdout, stderr)."""
    _, stdout, stderr = client.exec_command(command, timeout=timeout)
    out, err = stdout.read().decode(), stderr.read().decode()
    return stdout.channel.recv_exit_status(), out, err


def q(*args: str) -> str:
    return " ".join(shlex.quote(a) for a in args)


# ----------------------------------------------------------------------------- SSH


def test_setup_files(gpu_lab: GpuLab) -> None:
    for spec in gpu_lab.hosts.values():
        assert oct(os.stat(spec.host_dir / "ssh_host_ed25519_key").st_mode & 0o777) == "0o600"
        assert oct(os.stat(spec.key_path).st_mode & 0o777) == "0o600"
        check = subprocess.run(["/usr/sbin/sshd", "-t", "-f", str(spec.config_path)],
                               capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
        assert not spec.strict_modes  # the lab is under /tmp (mode 1777)
        assert "StrictModes no" in spec.config_path.read_text()
        config = json.loads((spec.models_dir / MODEL / "config.json").read_text())
        assert config["architectures"] == ["LlamaForCausalLM"]
        assert config["num_attention_heads"] == 40 and config["hidden_size"] == 5120
        shard = spec.models_dir / MODEL / "model-00001-of-00002.safetensors"
        assert 100_000 < shard.stat().st_size < 1_000_000
    shards = [s.models_dir / MODEL / "model-00002-of-00002.safetensors"
              for s in gpu_lab.hosts.values()]
    assert shards[0].read_bytes() == shards[1].read_bytes()  # deterministic
    lines = gpu_lab.hosts["gpu-1"].known_hosts.read_text().splitlines()
    assert len(lines) == 2 and all(re.match(r"\[127\.0\.0\.1\]:\d+ ssh-ed25519 AAAA", ln)
                                   for ln in lines)


def test_prepare_is_idempotent(gpu_lab: GpuLab) -> None:
    spec = gpu_lab.hosts["gpu-2"]
    key_before = host_public_key(gpu_lab.layout, "gpu-2")
    again = prepare_host(gpu_lab.layout, "gpu-2", spec.port)
    assert again == spec
    assert host_public_key(gpu_lab.layout, "gpu-2") == key_before
    assert len(spec.known_hosts.read_text().splitlines()) == 2


def test_hosts_reachable_and_distinct(clients: dict[str, paramiko.SSHClient],
                                      gpu_lab: GpuLab) -> None:
    seen = {}
    for name, client in clients.items():
        rc, out, _ = sh(client, 'echo "$PHASEGATE_GPU_HOST|$PHASEGATE_LAB"; command -v docker')
        assert rc == 0
        host, lab = out.splitlines()[0].split("|")
        assert host == name and Path(lab) == gpu_lab.layout.root.resolve()
        assert out.splitlines()[1] == str(gpu_lab.hosts[name].host_dir / "bin" / "docker")
        seen[name] = host
    assert len(set(seen.values())) == 2


def test_wrong_host_key_is_refused(gpu_lab: GpuLab, tmp_path: Path) -> None:
    one, two = gpu_lab.hosts["gpu-1"], gpu_lab.hosts["gpu-2"]
    bad = tmp_path / "known_hosts"
    bad.write_text(f"[127.0.0.1]:{one.port} {host_public_key(gpu_lab.layout, two.name)}\n")
    with pytest.raises(paramiko.BadHostKeyException):
        _connect(one, bad)


def test_unknown_host_is_refused(gpu_lab: GpuLab, tmp_path: Path) -> None:
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    with pytest.raises(paramiko.SSHException, match="not found in known_hosts"):
        _connect(gpu_lab.hosts["gpu-1"], empty)


def test_strict_modes_yes_lab_under_home() -> None:
    home = Path.home()
    if not strict_modes_ok(home):
        pytest.skip("home directory is not acceptable to StrictModes")
    root = Path(tempfile.mkdtemp(prefix=".phasegate-gpuhost-", dir=home))
    pid = 0
    try:
        layout = LabLayout(root / "lab")
        spec = prepare_host(layout, "gpu-s", free_port())
        assert spec.strict_modes and "StrictModes yes" in spec.config_path.read_text()
        pid = _start_sshd(spec, layout)
        client = _connect(spec)
        try:
            assert sh(client, "echo $PHASEGATE_GPU_HOST")[1].strip() == "gpu-s"
        finally:
            client.close()
    finally:
        if pid:
            stop_pid(pid, timeout=5)
        shutil.rmtree(root, ignore_errors=True)


# ----------------------------------------------------------------------------- nvidia-smi


def test_nvidia_smi_formats(clients: dict[str, paramiko.SSHClient], gpu_lab: GpuLab) -> None:
    c = clients["gpu-1"]
    rc, out, _ = sh(c, "nvidia-smi --list-gpus")
    assert rc == 0 and re.fullmatch(r"GPU 0: NVIDIA RTX A6000 \(UUID: GPU-[0-9a-f-]{36}\)\n", out)
    fields = ("index,name,memory.total,memory.used,memory.free,utilization.gpu,uuid,"
              "temperature.gpu,power.draw,driver_version")
    rc, out, _ = sh(c, f"nvidia-smi --query-gpu={fields} --format=csv")
    header, row = out.splitlines()
    assert header == ("index, name, memory.total [MiB], memory.used [MiB], memory.free [MiB], "
                      "utilization.gpu [%], uuid, temperature.gpu, power.draw [W], "
                      "driver_version")
    cells = row.split(", ")
    assert cells[:3] == ["0", "NVIDIA RTX A6000", "49140 MiB"]
    assert re.fullmatch(r"\d+ %", cells[5]) and re.fullmatch(r"\d+\.\d\d W", cells[8])
    rc, out, _ = sh(c, "nvidia-smi --query-gpu=index,memory.total -i 0 "
                       "--format=csv,noheader,nounits")
    assert (rc, out) == (0, "0, 49140\n")
    rc, out, _ = sh(c, "nvidia-smi --query-gpu=index,bogus --format=csv")
    assert (rc, out.strip()) == (2, 'Field "bogus" is not a valid field to query.')
    rc, out, _ = sh(c, "nvidia-smi")
    assert rc == 0 and "Driver Version: 535.129.03" in out and "NVIDIA RTX A6000" in out
    assert all(len(line) == 89 for line in out.splitlines()[1:])


def test_nvidia_smi_follows_inventory(clients: dict[str, paramiko.SSHClient],
                                      gpu_lab: GpuLab) -> None:
    c = clients["gpu-2"]
    rc, out, _ = sh(c, "nvidia-smi")
    assert (rc, out.strip()) == (6, "No devices were found")
    assert sh(c, "nvidia-smi --list-gpus")[0] == 6
    try:
        set_gpu_count(gpu_lab.layout, "gpu-2", 2)
        rc, out, _ = sh(c, "nvidia-smi --list-gpus | wc -l")
        assert out.strip() == "2"
        rc, out, _ = sh(c, "nvidia-smi -i 1 --query-gpu=index --format=csv,noheader")
        assert (rc, out) == (0, "1\n")
        assert sh(c, "nvidia-smi -i 5 -L")[0] == 6
    finally:
        set_gpu_count(gpu_lab.layout, "gpu-2", 0)


# ----------------------------------------------------------------------------- docker


def _run_cmd(gpu_lab: GpuLab, name: str, port: int, gpus: str, tp: int = 1) -> str:
    return gpu_lab.entry_prefix + q(
        "docker", "run", "-d", "--name", name, "--gpus", gpus, "--restart", "always",
        "-p", f"{port}:8000", "-v", "/models:/models", "vllm/vllm-openai:latest",
        "--model", f"/models/{MODEL}", "--tensor-parallel-size", str(tp),
        "--gpu-memory-utilization", "0.9", "--max-model-len", "4096")


def _healthy(port: int) -> bool:
    return httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200


def test_docker_lifecycle(clients: dict[str, paramiko.SSHClient], gpu_lab: GpuLab) -> None:
    c, port = clients["gpu-1"], free_port()
    rc, out, err = sh(c, _run_cmd(gpu_lab, "vllm-server", port, '"device=0"'))
    assert rc == 0, err
    cid = out.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", cid)
    wait_for(lambda: _healthy(port), timeout=30, what="vLLM container")
    rc, out, _ = sh(c, q("docker", "ps", "--filter", "name=vllm", "--format", "{{.Names}}"))
    assert out == "vllm-server\n"
    rc, out, _ = sh(c, "docker ps")
    assert out.splitlines()[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED",
                                           "STATUS", "PORTS", "NAMES"]
    assert cid[:12] in out and re.search(r"Up (\d+ seconds?|Less than a second)", out)
    rc, out, _ = sh(c, q("docker", "ps", "--format", "{{json .}}"))
    assert json.loads(out)["State"] == "running"
    rc, out, _ = sh(c, q("docker", "inspect", "--format", "{{.State.Running}}", "vllm-server"))
    assert out == "true\n"
    rc, out, _ = sh(c, q("docker", "inspect", "--format", "{{json .Config.Cmd}}", "vllm-server"))
    assert json.loads(out)[:2] == ["--model", f"/models/{MODEL}"]
    rc, out, _ = sh(c, "docker inspect vllm-server")
    doc = json.loads(out)[0]
    assert doc["Id"] == cid and doc["Name"] == "/vllm-server"
    assert doc["HostConfig"]["DeviceRequests"][0]["DeviceIDs"] == ["0"]
    assert doc["HostConfig"]["DeviceRequests"][0]["Capabilities"] == [["gpu"]]
    assert doc["HostConfig"]["RestartPolicy"]["Name"] == "always"
    assert doc["HostConfig"]["PortBindings"] == {"8000/tcp": [{"HostIp": "",
                                                               "HostPort": str(port)}]}
    assert doc["Mounts"][0]["Destination"] == "/models"
    wait_for(lambda: int(sh(c, "nvidia-smi --query-gpu=memory.used --format=csv,noheader,"
                               "nounits")[1]) > 1000, timeout=10, what="GPU memory in use")
    rc, out, _ = sh(c, "nvidia-smi")
    assert str(doc["State"]["Pid"]) in out
    rc, out, _ = sh(c, "docker logs --tail 50 vllm-server")
    assert rc == 0 and out.strip()
    rc, _, err = sh(c, _run_cmd(gpu_lab, "vllm-server", free_port(), "all"))
    assert rc == 125 and f'The container name "/vllm-server" is already in use by ' \
                         f'container "{cid}"' in err
    rc, _, err = sh(c, "docker rm vllm-server")
    assert rc == 1 and "You cannot remove a running container" in err
    rc, out, _ = sh(c, "docker stop vllm-server")
    assert (rc, out) == (0, "vllm-server\n")
    rc, out, _ = sh(c, "docker ps -a --format '{{.Status}}'")
    assert re.fullmatch(r"Exited \(0\) .* ago\n", out)
    assert sh(c, "docker stop vllm-server")[:2] == (0, "vllm-server\n")
    assert sh(c, "docker inspect -f '{{.State.Running}} {{.State.ExitCode}}' vllm-server")[1] \
        == "false 0\n"
    assert sh(c, gpu_lab.entry_prefix + "docker start vllm-server")[:2] == (0, "vllm-server\n")
    wait_for(lambda: _healthy(port), timeout=30, what="restarted vLLM container")
    rc, out, _ = sh(c, "docker inspect -f '{{.Id}} {{.State.Running}}' vllm-server")
    assert out == f"{cid} true\n"
    assert sh(c, "docker stop -t 5 vllm-server")[:2] == (0, "vllm-server\n")
    assert sh(c, "docker rm vllm-server")[:2] == (0, "vllm-server\n")
    assert sh(c, "docker ps -a -q")[1] == ""
    rc, _, err = sh(c, "docker stop vllm-server")
    assert (rc, err) == (1, "Error response from daemon: No such container: vllm-server\n")
    rc, out, err = sh(c, "docker inspect vllm-server")
    assert (rc, out, err) == (1, "[]\n", "Error: No such object: vllm-server\n")


def test_docker_run_errors(clients: dict[str, paramiko.SSHClient], gpu_lab: GpuLab) -> None:
    one, two = clients["gpu-1"], clients["gpu-2"]
    rc, _, err = sh(one, "docker run -d --name web -p 8080:80 nginx:1.25")
    assert rc == 125 and "Unable to find image 'nginx:1.25' locally" in err
    rc, _, err = sh(one, _run_cmd(gpu_lab, "two-gpus", free_port(), '"device=0,1"', tp=2))
    assert rc == 125 and "nvidia-container-cli: device error: 1: unknown device" in err
    rc, _, err = sh(two, _run_cmd(gpu_lab, "vllm-server", free_port(), "all"))
    assert rc == 125 and "nvidia-container-cli" in err
    rc, _, err = sh(one, "docker run -d --name bad --gpus device=0,1 vllm/vllm-openai")
    assert rc == 125 and "cannot set both Count and DeviceIDs" in err
    assert sh(one, "docker ps -a -q")[1] == "" and sh(two, "docker ps -a -q")[1] == ""


def test_container_that_dies_is_exited(clients: dict[str, paramiko.SSHClient],
                                       gpu_lab: GpuLab) -> None:
    c = clients["gpu-1"]
    cmd = gpu_lab.entry_prefix + q("docker", "run", "-d", "--name", "no-model", "--gpus", "all",
                                   "-p", f"{free_port()}:8000", "-v", "/models:/models",
                                   "vllm/vllm-openai", "--model", "/models/missing")
    assert sh(c, cmd)[0] == 0
    wait_for(lambda: sh(c, "docker inspect -f '{{.State.Status}}' no-model")[1] == "exited\n",
             timeout=30, what="container exit")
    rc, out, _ = sh(c, "docker ps -a --filter name=no-model --format '{{.Status}}'")
    assert re.fullmatch(r"Exited \([1-9]\d*\) .* ago\n", out)
    assert sh(c, "docker ps -q")[1] == ""
    assert sh(c, "docker rm no-model")[0] == 0


def test_concurrent_runs_create_one_container(clients: dict[str, paramiko.SSHClient],
                                              gpu_lab: GpuLab) -> None:
    c = clients["gpu-1"]
    results: list[tuple[int, str, str]] = []
    cmds = [_run_cmd(gpu_lab, "race", free_port(), "all") for _ in range(2)]
    threads = [threading.Thread(target=lambda cmd=cmd: results.append(sh(c, cmd)))
               for cmd in cmds]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert sorted(r[0] for r in results) == [0, 125]
    assert sh(c, "docker ps -a --format '{{.Names}}'")[1] == "race\n"
    assert sh(c, "docker rm -f race")[:2] == (0, "race\n")
