"""`phasegate lab up | status | down`: the lab's parts as child processes, tracked by PID.

`up` starts every part on free 127.0.0.1 ports (reusing the previous ports when free), waits
until each one really answers, and records everything in `<lab>/lab.json` as it goes, so that
`down` can stop exactly what was started, also after a failed `up`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx

from phasegate.constants import LAB_DIR_ENV, VLLM_URLS_ENV
from phasegate.errors import LabError
from phasegate.lab import control, exporters, services
from phasegate.lab.layout import LabLayout
from phasegate.lab.monitoring import (
    APP_DB_OID,
    JOBS,
    write_alertmanager_config,
    write_prometheus_config,
)
from phasegate.lab.procs import (
    free_port,
    pid_alive,
    port_free,
    spawn,
    stop_pid,
    wait_for,
    wait_port,
)
from phasegate.policy.containers import VLLM_NAME, Container

__all__ = ["UpOptions", "down", "load_state", "status", "up"]

GCP_PROJECT, GCP_REGION, GCP_ZONE, GCP_SERVICE = (
    "dreamseed-prod", "asia-northeast3", "asia-northeast3-a", "dreamseed-api")
# The exporters that read Redis and PostgreSQL (stopped before them) and the machine.
EXPORTERS = ["redis_exporter", "postgres_exporter", "node_exporter", "disk_exporter"]
# Stop order: load first, then consumers, then the stores they write to.
_STOP_ORDER = ["traffic", "api", *EXPORTERS, "gpu_exporter", "prometheus",
               "alertmanager", "gcp", "receiver", "prefect", "redis", "postgres"]
# Prefect workers (process keys "prefect-worker:<name>") stop before everything else: they
# run the flows that change the world. Two per work pool of prefect.yaml.
WORKER_KEY, WORKERS_PER_POOL = "prefect-worker:", 2


@dataclass
class UpOptions:
    """What `lab up` builds. `gpus` is the initial GPU count per host."""

    prefect: bool = True
    schedules: bool = True  # False: deployment schedules off (the test suite's lab)
    gpus: dict[str, int] = field(default_factory=lambda: {"gpu-1": 1, "gpu-2": 0})
    traffic_rate: float = 2.0
    history_days: int = 90
    vllm_load_seconds: float = 3.0

    def __post_init__(self) -> None:
        # Weekly trigger rules ("3 consecutive weeks") need at least three weeks of days.
        if self.history_days < 21:
            raise LabError(f"history_days must be >= 21 (got {self.history_days})")
        if not self.gpus:
            raise LabError("the lab needs at least one GPU host")


def load_state(layout: LabLayout) -> dict[str, Any] | None:
    """The recorded lab.json, or None when this directory never held a lab."""
    try:
        data = json.loads(layout.state_file.read_text())
    except FileNotFoundError:
        return None
    except ValueError as exc:
        raise LabError(f"{layout.state_file} is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else None


class _State:
    """lab.json under a lock; every change is written at once (a crash loses nothing)."""

    def __init__(self, layout: LabLayout, data: dict[str, Any]) -> None:
        self.layout, self.data, self._lock = layout, data, threading.Lock()

    def update(self, **parts: Any) -> None:
        with self._lock:
            self.data.update(parts)
            control.write_json_atomic(self.layout.state_file, self.data)

    def add_pid(self, component: str, pid: int) -> None:
        with self._lock:
            self.data.setdefault("processes", {})[component] = pid
            control.write_json_atomic(self.layout.state_file, self.data)


def _alive(state: dict[str, Any]) -> dict[str, int]:
    return {c: p for c, p in state.get("processes", {}).items() if pid_alive(int(p))}


# A GPU host's k-th vLLM replica is published on its base port + k (policy.transition), so a
# host's base port comes with this many free ports after it.
VLLM_PORT_SPAN = 8


def _ports(old: dict[str, Any] | None, names: list[str]) -> dict[str, int]:
    """A port per name: the previous lab's port when it is still free, else a new one. A vLLM
    host's port comes with VLLM_PORT_SPAN - 1 free ports after it, used by nothing else."""
    previous = (old or {}).get("ports", {})
    ports: dict[str, int] = {}
    reserved: set[int] = set()
    for name in names:
        span = VLLM_PORT_SPAN if name.startswith("vllm:") else 1
        port = int(previous.get(name, 0))
        for _ in range(1000):  # bounded: free ports are plenty on loopback
            wanted = set(range(port, port + span))
            if port and not wanted & reserved and all(port_free(p) for p in wanted):
                break
            port = free_port()
        ports[name] = port
        reserved |= set(range(port, port + span))
    return ports


def _recorded_vllm_ports(layout: LabLayout, hosts: list[str]) -> dict[str, int]:
    """{"vllm:<host>": published port} of the vLLM containers recorded on each host."""
    found = {}
    for host in hosts:
        path = layout.containers_dir(host) / f"{VLLM_NAME}.json"
        try:
            found[f"vllm:{host}"] = int(json.loads(path.read_text())["host_port"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return found


def up(layout: LabLayout, opts: UpOptions | None = None) -> dict[str, Any]:
    """Start the whole lab in `layout.root`; return the status document. Raises LabError."""
    opts = opts or UpOptions()
    layout.ensure()
    old = load_state(layout)
    if old and _alive(old):
        raise LabError(f"a lab is already running in {layout.root} "
                       f"(pids {sorted(_alive(old).values())}); run `phasegate lab down` first")
    hosts = sorted(opts.gpus)
    names = ["postgres", "redis", "prometheus", "alertmanager", "prefect", "api", "gpu_exporter",
             *EXPORTERS, "gcp", "receiver"]
    names += [f"ssh:{h}" for h in hosts] + [f"vllm:{h}" for h in hosts]
    if old:  # a restarted container keeps its published port, so its URL must too
        old.setdefault("ports", {}).update(_recorded_vllm_ports(layout, hosts))
    state = _State(layout, _skeleton(layout, _ports(old, names), hosts, opts, old))
    started = time.monotonic()
    try:
        _start_all(layout, state, opts)
    except Exception as exc:
        _stop_all(layout, state.data)
        raise LabError(f"lab up failed: {exc} (logs: {layout.logs_dir})") from exc
    state.update(ready_seconds=round(time.monotonic() - started, 2),
                 started_at=datetime.now(UTC).isoformat(timespec="seconds"))
    return status(layout)


def _skeleton(layout: LabLayout, ports: dict[str, int], hosts: list[str], opts: UpOptions,
              old: dict[str, Any] | None) -> dict[str, Any]:
    """The status document before anything starts (URLs are known from the ports)."""
    base = "postgresql://postgres@127.0.0.1:{}/{}"
    pg = ports["postgres"]
    anchor = (old or {}).get("world_anchor") or datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "dir": str(layout.root), "ports": ports, "world_anchor": anchor, "processes": {},
        "postgres": {"dsn": base.format(pg, "postgres"), "app_dsn": base.format(pg, "dreamseed"),
                     "state_dsn": base.format(pg, "phasegate"), "host": "127.0.0.1", "port": pg,
                     "user": "postgres"},
        "redis": {"url": f"redis://127.0.0.1:{ports['redis']}/0"},
        "prometheus": {"url": f"http://127.0.0.1:{ports['prometheus']}"},
        "alertmanager": {"url": f"http://127.0.0.1:{ports['alertmanager']}"},
        "api": {"url": f"http://127.0.0.1:{ports['api']}"},
        "vllm": {"url": f"http://127.0.0.1:{ports['vllm:' + hosts[0]]}"},
        "receiver": {"url": f"http://127.0.0.1:{ports['receiver']}"},
        "gcp": {"endpoint": f"http://127.0.0.1:{ports['gcp']}", "project": GCP_PROJECT,
                "region": GCP_REGION, "zone": GCP_ZONE,
                "cloud_run_service": f"projects/{GCP_PROJECT}/locations/{GCP_REGION}"
                                     f"/services/{GCP_SERVICE}"},
        "gpu_hosts": [],
        "traffic": {"rate": opts.traffic_rate},
        **({"prefect": {"api_url": f"http://127.0.0.1:{ports['prefect']}/api"}}
           if opts.prefect else {}),
    }


def _start_all(layout: LabLayout, state: _State, opts: UpOptions) -> None:
    """Start the parts: independent ones in parallel, then those that need them."""
    from phasegate.lab.world import World

    control.set_setting(layout, "vllm_load_seconds", opts.vllm_load_seconds)
    control.set_traffic_rate(layout, opts.traffic_rate)
    anchor = datetime.fromisoformat(state.data["world_anchor"])
    world = World.build(anchor, days=opts.history_days)
    for host, count in opts.gpus.items():  # before the history, which labels GPU 0's UUID
        layout.host_dir(host).mkdir(parents=True, exist_ok=True)
        if not control.read_gpus(layout, host) and not layout.gpus_file(host).exists():
            control.set_gpu_count(layout, host, count)
    first: list[Callable[[], None]] = [
        lambda: _postgres(layout, state, world),
        lambda: _redis(layout, state),
        lambda: _prometheus(layout, state, world, opts),
        lambda: _alertmanager_and_receiver(layout, state),
        lambda: _gcp(layout, state),
        lambda: _gpu_hosts(layout, state, opts),
    ]
    if opts.prefect:
        first.append(lambda: _prefect_server(layout, state))
    _run_parallel(first)
    _run_parallel([
        lambda: _exporters(layout, state),
        lambda: _vllm(layout, state),
        lambda: _api_and_traffic(layout, state),
    ])
    waits = [lambda: _wait_scraped(state)]
    if opts.prefect:
        waits.append(lambda: _prefect_ready(layout, state, opts))
    _run_parallel(waits)


def _run_parallel(steps: list[Callable[[], None]]) -> None:
    """Run steps in threads; re-raise the first failure after all have finished."""
    with ThreadPoolExecutor(max_workers=len(steps)) as pool:
        futures = [pool.submit(step) for step in steps]
    errors = [f.exception() for f in futures if f.exception() is not None]
    if errors:
        raise errors[0]  # type: ignore[misc]


def _postgres(layout: LabLayout, state: _State, world: Any) -> None:
    import psycopg

    from phasegate.lab.seed_app import create_app_schema, seed_app_db
    from phasegate.tasks.state_store import create_state_schema

    pid, root, created = services.start_postgres(layout, state.data["ports"]["postgres"])
    state.add_pid("postgres", pid)
    pg = state.data["postgres"]
    pg["data_dir"] = str(root)
    with psycopg.connect(pg["dsn"], autocommit=True) as conn:
        existing = {r[0] for r in conn.execute("SELECT datname FROM pg_database")}
        if "dreamseed" not in existing:  # a fixed OID: the history's datid label is known
            conn.execute(f'CREATE DATABASE "dreamseed" OID {APP_DB_OID}')
            existing.add("dreamseed")
        for db in ("dreamseed", "phasegate"):
            if db not in existing:
                conn.execute(f'CREATE DATABASE "{db}"')
    with psycopg.connect(pg["app_dsn"]) as conn:
        create_app_schema(conn)
        if created or not conn.execute("SELECT count(*) FROM users").fetchone()[0]:  # type: ignore[index]
            pg["seeded_rows"] = seed_app_db(conn, world)
    with psycopg.connect(pg["state_dsn"]) as conn:
        create_state_schema(conn)
    state.update(postgres=pg)


def _redis(layout: LabLayout, state: _State) -> None:
    state.add_pid("redis", services.start_redis(layout, state.data["ports"]["redis"]))


def _prometheus(layout: LabLayout, state: _State, world: Any, opts: UpOptions) -> None:
    from phasegate.lab.history import HistoryLabels, load_history, write_openmetrics

    ports = state.data["ports"]
    tsdb = layout.prometheus_dir / "data"
    if not tsdb.exists():
        om = layout.prometheus_dir / "history.om"
        end = datetime.fromisoformat(state.data["world_anchor"]) - timedelta(minutes=1)
        labels = HistoryLabels.for_lab(ports, control.read_gpus(layout, "gpu-1"),
                                       net_device=exporters.primary_net_device())
        write_openmetrics(om, world, labels, end)
        load_history(om, tsdb)
        om.unlink()
    config = layout.prometheus_dir / "prometheus.yml"
    vllm_targets = {h: ports[f"vllm:{h}"] for h in _host_names(ports)}
    write_prometheus_config(config, ports, vllm_targets, ports["alertmanager"])
    state.add_pid("prometheus", services.start_prometheus(layout, ports["prometheus"], config))


def _host_names(ports: dict[str, int]) -> list[str]:
    return sorted(k.split(":", 1)[1] for k in ports if k.startswith("ssh:"))


def _alertmanager_and_receiver(layout: LabLayout, state: _State) -> None:
    ports = state.data["ports"]
    _spawn_py(layout, state, "receiver", "phasegate.lab.receiver", "--port", str(ports["receiver"]))
    wait_port(ports["receiver"], 15)
    config = layout.alertmanager_dir / "alertmanager.yml"
    write_alertmanager_config(config, ports["receiver"])
    state.add_pid("alertmanager",
                  services.start_alertmanager(layout, ports["alertmanager"], config))


def _gcp(layout: LabLayout, state: _State) -> None:
    gcp = state.data["gcp"]
    _spawn_py(layout, state, "gcp", "phasegate.lab.gcp_emulator",
              "--port", str(state.data["ports"]["gcp"]),
              "--project", gcp["project"], "--region", gcp["region"], "--zone", gcp["zone"],
              "--service", GCP_SERVICE,
              "--api-env", f"{VLLM_URLS_ENV}={state.data['vllm']['url']}")
    wait_port(state.data["ports"]["gcp"], 15)


def _spawn_py(layout: LabLayout, state: _State, component: str, module: str,
              *args: str) -> int:
    """Start `python -m module --lab-dir <lab> args...` and record its PID."""
    argv = [sys.executable, "-m", module, "--lab-dir", str(layout.root), *args]
    pid = spawn(argv, layout.logs_dir / f"{component}.log", env=_child_env())
    state.add_pid(component, pid)
    return pid


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("PREFECT_API_URL", None)
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _gpu_hosts(layout: LabLayout, state: _State, opts: UpOptions) -> None:
    """One sshd per GPU host: own port, own host key, own SetEnv (see lab.gpuhost.setup)."""
    from phasegate.lab.gpuhost.setup import make_client_keys, prepare_host

    make_client_keys(layout)
    hosts = []
    for name in sorted(opts.gpus):
        spec = prepare_host(layout, name, state.data["ports"][f"ssh:{name}"])
        pid = spawn(spec.sshd_argv, layout.logs_dir / f"sshd-{name}.log")
        state.add_pid(f"ssh:{name}", pid)
        vllm_port = state.data["ports"][f"vllm:{name}"]
        hosts.append({"name": name, "host": spec.host, "port": spec.port, "user": spec.user,
                      "key_path": str(spec.key_path), "known_hosts": str(spec.known_hosts),
                      "gpus": len(control.read_gpus(layout, name)), "vllm_port": vllm_port,
                      "vllm_url": f"http://127.0.0.1:{vllm_port}",
                      "models_dir": str(spec.models_dir)})
    for h in hosts:
        wait_port(h["port"], 10)
    state.update(gpu_hosts=hosts)


def _exporters(layout: LabLayout, state: _State) -> None:
    """The real Debian exporters (lab.exporters), the simulated GPUs' DCGM exporter and the
    lab-only disk source; each on its own port, in the job lab.monitoring.JOBS gives it."""
    ports, pg_dsn = state.data["ports"], state.data["postgres"]["dsn"]
    _spawn_py(layout, state, "gpu_exporter", "phasegate.lab.gpu_exporter",
              "--port", str(ports["gpu_exporter"]))
    _spawn_py(layout, state, "disk_exporter", "phasegate.lab.disk_exporter",
              "--port", str(ports["disk_exporter"]), "--pg-dsn", pg_dsn)
    exporters.start_redis_exporter(layout, ports["redis_exporter"], state.data["redis"]["url"],
                                   functools.partial(state.add_pid, "redis_exporter"))
    exporters.start_postgres_exporter(layout, ports["postgres_exporter"], pg_dsn,
                                      functools.partial(state.add_pid, "postgres_exporter"))
    exporters.start_node_exporter(layout, ports["node_exporter"],
                                  functools.partial(state.add_pid, "node_exporter"))
    wait_port(ports["gpu_exporter"], 15)
    wait_port(ports["disk_exporter"], 15)


def host_env(layout: LabLayout, host: str) -> dict[str, str]:
    """The environment an SSH session on `host` gets (used to run its shims locally)."""
    return {**_child_env(), LAB_DIR_ENV: str(layout.root), "PHASEGATE_GPU_HOST": host,
            "PATH": f"{layout.host_dir(host) / 'bin'}:/usr/local/bin:/usr/bin:/bin"}


def _docker(layout: LabLayout, host: str, *args: str) -> subprocess.CompletedProcess[str]:
    docker = str(layout.host_dir(host) / "bin" / "docker")
    return subprocess.run([docker, *args], capture_output=True, text=True, timeout=60,
                          env=host_env(layout, host), check=False)


def _vllm(layout: LabLayout, state: _State) -> None:
    """Start the recorded vLLM containers again, or the phase-1 one on the first host."""
    hosts = state.data["gpu_hosts"]
    recorded = [(h["name"], p.stem) for h in hosts
                for p in sorted(layout.containers_dir(h["name"]).glob("*.json"))]
    if recorded:
        for host, name in recorded:
            res = _docker(layout, host, "start", name)
            if res.returncode != 0:
                raise LabError(f"{host}: docker start {name}: {res.stderr.strip()}")
    else:
        first = hosts[0]
        argv = phase1_container(first["name"], first["vllm_port"]).run_argv()
        res = _docker(layout, first["name"], *argv)
        if res.returncode != 0:
            raise LabError(f"{first['name']}: docker run: {res.stderr.strip()}")
    url = state.data["vllm"]["url"]
    wait_for(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 60,
             interval=0.2, what="vLLM simulator")


def phase1_container(host: str, host_port: int) -> Container:
    """The phase-1 vLLM container the lab starts with: the plan's phase 1 on `host`, exactly
    as a transition would lay it out (one container model, policy.containers)."""
    from phasegate.policy.plan import load_plan
    from phasegate.policy.transition import vllm_containers

    return vllm_containers(load_plan(), 1, {host: host_port})[0]


def _api_and_traffic(layout: LabLayout, state: _State) -> None:
    d, ports = state.data, state.data["ports"]
    _spawn_py(layout, state, "api", "phasegate.lab.api_sim", "--port", str(ports["api"]),
              "--redis-url", d["redis"]["url"], "--vllm-url", d["vllm"]["url"],
              "--app-dsn", d["postgres"]["app_dsn"])
    wait_for(lambda: httpx.get(f"{d['api']['url']}/healthz", timeout=2).status_code == 200,
             30, what="API simulator")
    _spawn_py(layout, state, "traffic", "phasegate.lab.traffic", "--api-url", d["api"]["url"])


def _wait_scraped(state: _State) -> None:
    """Wait until Prometheus has scraped every always-on target (up == 1), as queries need."""
    url = state.data["prometheus"]["url"] + "/api/v1/query"
    first_host = state.data["gpu_hosts"][0]["name"]
    query = (f'up{{job=~"{"|".join(JOBS)}"}} == 1'
             f' or up{{job="vllm",host="{first_host}"}} == 1')

    def all_up() -> bool:
        result = httpx.get(url, params={"query": query}, timeout=2).json()["data"]["result"]
        return len(result) >= len(JOBS) + 1

    wait_for(all_up, 60, interval=0.5, what="prometheus first scrape")


def _prefect_server(layout: LabLayout, state: _State) -> None:
    """The Prefect server on its own database in the lab's PostgreSQL: started once
    PostgreSQL answers (its thread records the PID when it does)."""
    wait_for(lambda: "postgres" in state.data["processes"], 180, interval=0.2,
             what="postgres (for the Prefect server)")
    pg = state.data["postgres"]
    url = services.prepare_prefect_database(layout, pg["dsn"], pg["host"], int(pg["port"]))
    prefect = {**state.data["prefect"], "database": (
        f"postgresql://{services.PREFECT_DB}@{pg['host']}:{pg['port']}/{services.PREFECT_DB}")}
    state.update(prefect=prefect)  # without the password: lab.json is printed
    state.add_pid("prefect", services.start_prefect(layout, state.data["ports"]["prefect"], url))


def _prefect_ready(layout: LabLayout, state: _State, opts: UpOptions) -> None:
    """Once the server answers: the Blocks, the work pools, every deployment of prefect.yaml
    (`prefect deploy --all`) and two process workers per pool, all in parallel."""
    from phasegate.deployments.serve import PREFECT_YAML, work_pools
    from phasegate.lab.blocks import save_lab_blocks

    services.wait_prefect(state.data["ports"]["prefect"])
    api, pools = state.data["prefect"]["api_url"], work_pools()
    workers: dict[str, list[str]] = {}
    services.delete_missed_runs(api)  # before any worker could start them
    for pool in pools:
        services.ensure_work_pool(api, pool)
        workers[pool] = [f"{pool}-worker-{i}" for i in range(1, WORKERS_PER_POOL + 1)]
        for name in workers[pool]:
            state.add_pid(WORKER_KEY + name,
                          services.start_prefect_worker(layout, api, pool, name))
    _run_parallel([
        lambda: state.update(blocks=save_lab_blocks(state.data)),
        lambda: _deploy(layout, api, PREFECT_YAML.parent, opts.schedules),
        *[lambda p=pool: services.wait_workers(api, p, workers[p]) for pool in pools]])
    state.update(prefect={**state.data["prefect"], "workers": workers})


def _deploy(layout: LabLayout, api: str, project_dir: Path, schedules: bool) -> None:
    services.deploy_all(layout, api, project_dir)
    if not schedules:
        services.deactivate_schedules(api)


def status(layout: LabLayout) -> dict[str, Any]:
    """The recorded lab document plus `running`: {component: alive} for every recorded PID."""
    data = load_state(layout)
    if data is None:
        raise LabError(f"no lab in {layout.root} (run `phasegate lab up`)")
    procs = data.get("processes", {})
    data["running"] = {c: pid_alive(int(p)) for c, p in procs.items()}
    data["containers"] = _container_pids(layout, data)
    for h in data.get("gpu_hosts", []):
        h["gpus"] = len(control.read_gpus(layout, h["name"]))
    return data


def _container_records(layout: LabLayout, data: dict[str, Any]) -> list[dict[str, Any]]:
    """The docker shim's container records on every GPU host, with `host` added."""
    records = []
    for h in data.get("gpu_hosts", []):
        for path in sorted(layout.containers_dir(h["name"]).glob("*.json")):
            try:
                rec = json.loads(path.read_text())
            except (ValueError, OSError):
                continue
            records.append({**rec, "host": h["name"], "record": path.stem})
    return records


def _container_pids(layout: LabLayout, data: dict[str, Any]) -> dict[str, int]:
    """PIDs of the running vLLM "containers" the docker shim started, {host/name: pid}."""
    return {f"{r['host']}/{r['record']}": int(r["pid"])
            for r in _container_records(layout, data)
            if r.get("pid") and pid_alive(int(r["pid"]))}


def down(layout: LabLayout, purge: bool = False) -> list[str]:
    """Stop every process the lab started (by PID) and, with `purge`, delete its data."""
    data = load_state(layout)
    if data is None:
        if purge and layout.root.exists():
            shutil.rmtree(layout.root)
        return []
    stopped = _stop_all(layout, data)
    data["processes"] = {}
    if purge:
        pg_root = data.get("postgres", {}).get("data_dir")
        if pg_root and Path(pg_root).exists() and Path(pg_root) != layout.root / "postgres":
            shutil.rmtree(pg_root)
        shutil.rmtree(layout.root)
    else:
        control.write_json_atomic(layout.state_file, data)
    return stopped


def _stop_all(layout: LabLayout, data: dict[str, Any]) -> list[str]:
    """Stop the Prefect workers (their flow runs change the world), the containers, then the
    recorded processes in dependency order. Names stopped."""
    procs = dict(data.get("processes", {}))
    stopped = []
    for component in sorted(c for c in procs if c.startswith(WORKER_KEY)):
        if services.stop_prefect_worker(int(procs.pop(component))):
            stopped.append(component)
    stopped += _stop_containers(layout, data)
    order = _STOP_ORDER + sorted(c for c in procs if c not in _STOP_ORDER)
    for component in order:
        if component not in procs:
            continue
        # PostgreSQL: SIGINT is "fast shutdown"; SIGTERM would wait for clients.
        sig = signal.SIGINT if component == "postgres" else signal.SIGTERM
        if stop_pid(int(procs[component]), sig, timeout=15):
            stopped.append(component)
    return stopped


def _stop_containers(layout: LabLayout, data: dict[str, Any]) -> list[str]:
    """`docker stop` each running container (so its record says Exited), then make sure its
    process and the shim's monitor are gone, by PID."""
    stopped = []
    for rec in _container_records(layout, data):
        pids = [int(rec[k]) for k in ("pid", "monitor_pid") if rec.get(k)]
        if not any(pid_alive(p) for p in pids):
            continue
        # If the shim fails, the PID fallback below still stops the container.
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            _docker(layout, rec["host"], "stop", "-t", "5", rec["record"])
        for pid in pids:
            stop_pid(pid, signal.SIGTERM, timeout=5)
        stopped.append(f"container {rec['host']}/{rec['record']}")
    return stopped
