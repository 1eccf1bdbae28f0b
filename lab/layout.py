"""Where everything of one lab lives inside its directory.

One lab = one directory (default `.lab`, or $PHASEGATE_LAB, or `--dir`). Every component gets
its paths from `LabLayout`, so nothing hard-codes a location.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from phasegate.constants import DEFAULT_LAB_DIR, LAB_DIR_ENV

__all__ = ["DEFAULT_LAB_DIR", "LabLayout", "lab_dir_from_env"]


def lab_dir_from_env(explicit: str | os.PathLike[str] | None = None) -> Path:
    """The lab directory: `explicit` if given, else $PHASEGATE_LAB, else `.lab`, made absolute."""
    raw = explicit or os.environ.get(LAB_DIR_ENV) or DEFAULT_LAB_DIR
    return Path(raw).expanduser().resolve()


@dataclass(frozen=True)
class LabLayout:
    """Paths inside one lab directory."""

    root: Path

    @property
    def state_file(self) -> Path:
        """lab.json: what `lab status --json` prints (ports, pids, DSNs)."""
        return self.root / "lab.json"

    @property
    def control_dir(self) -> Path:
        return self.root / "control"

    @property
    def faults_file(self) -> Path:
        return self.control_dir / "faults.json"

    @property
    def traffic_file(self) -> Path:
        return self.control_dir / "traffic.json"

    @property
    def logs_dir(self) -> Path:
        return self.root / "logs"

    @property
    def hosts_dir(self) -> Path:
        return self.root / "hosts"

    def host_dir(self, host: str) -> Path:
        """Root of one simulated GPU host (its bin/, docker/, models/, gpus.json)."""
        return self.hosts_dir / host

    def gpus_file(self, host: str) -> Path:
        """The GPU inventory of a host, written by `lab gpus`, read by nvidia-smi."""
        return self.host_dir(host) / "gpus.json"

    def gpu_load_file(self, host: str) -> Path:
        """Live per-GPU load written by the vLLM simulator running on that host."""
        return self.host_dir(host) / "gpu_load.json"

    def containers_dir(self, host: str) -> Path:
        """The docker shim's container records (one JSON per container) and logs."""
        return self.host_dir(host) / "docker"

    @property
    def ssh_dir(self) -> Path:
        """Client side: lab key pair and known_hosts."""
        return self.root / "ssh"

    @property
    def prometheus_dir(self) -> Path:
        return self.root / "prometheus"

    @property
    def alertmanager_dir(self) -> Path:
        return self.root / "alertmanager"

    @property
    def redis_dir(self) -> Path:
        return self.root / "redis"

    @property
    def prefect_dir(self) -> Path:
        return self.root / "prefect"

    @property
    def gcp_dir(self) -> Path:
        return self.root / "gcp"

    @property
    def cloud_run_serving_file(self) -> Path:
        """What the emulated Cloud Run's serving revision runs with ({service: {revision,
        env}}), written by the GCP emulator when a rollout completes; the API simulator (the
        service's instances) follows its env."""
        return self.gcp_dir / "serving.json"

    @property
    def inbox_dir(self) -> Path:
        """Where the local Slack/Alertmanager webhook receiver appends what it got."""
        return self.root / "inbox"

    def ensure(self) -> None:
        """Create the directories every component expects."""
        for d in (self.root, self.control_dir, self.logs_dir, self.hosts_dir, self.ssh_dir,
                  self.prometheus_dir, self.alertmanager_dir, self.redis_dir, self.gcp_dir,
                  self.inbox_dir):
            d.mkdir(parents=True, exist_ok=True)
