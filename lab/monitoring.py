"""Prometheus and Alertmanager configuration for the lab (scrape jobs per lab/README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["APP_DB_OID", "JOBS", "SCRAPE_INTERVAL_S", "write_alertmanager_config",
           "write_prometheus_config"]

SCRAPE_INTERVAL_S = 2  # short, so a time-compressed watch has data (min_window 5s)

# Prometheus job -> the supervisor's port name of its one target. The seed's prometheus.yml
# names api-server, gpu, postgres and redis; node_exporter's job is `node`, the name its own
# documentation and Prometheus' getting-started guide give it (the seed has no node job).
# `lab-disk` is lab-only: the simulated PostgreSQL data volume (lab.disk_exporter).
JOBS = {"api-server": "api", "gpu": "gpu_exporter", "redis": "redis_exporter",
        "postgres": "postgres_exporter", "node": "node_exporter", "lab-disk": "disk_exporter"}
# The app database's OID, fixed when the lab creates it: postgres_exporter labels its
# pg_stat_database series with datid, and the backfilled history (written while PostgreSQL
# starts) must carry the same label. Far above the OIDs a fresh cluster hands out first.
APP_DB_OID = 50000

# A lab-only rule: a scrape target of the lab is down. Scaling alert rules come from the plan.
_LAB_RULES = {
    "groups": [{
        "name": "lab",
        "rules": [{
            "alert": "LabTargetDown",
            "expr": f'up{{job=~"{"|".join(JOBS)}"}} == 0',
            "for": "30s",
            "labels": {"severity": "warning"},
            "annotations": {"summary": "lab target {{ $labels.job }} is down"},
        }],
    }],
}


def write_prometheus_config(path: Path, ports: dict[str, int], vllm_targets: dict[str, int],
                            alertmanager_port: int) -> None:
    """Write prometheus.yml: the JOBS, and vllm with one target per GPU host."""
    jobs: list[dict[str, Any]] = [_job(job, [ports[part]]) for job, part in JOBS.items()]
    jobs += [
        {"job_name": "vllm", "static_configs": [
            {"targets": [f"127.0.0.1:{port}"], "labels": {"host": host}}
            for host, port in sorted(vllm_targets.items())
        ]},
    ]
    rules = path.parent / "lab_rules.yml"
    rules.write_text(yaml.safe_dump(_LAB_RULES, sort_keys=False))
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s",
                   "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
                   "scrape_timeout": f"{SCRAPE_INTERVAL_S * 1000 - 200}ms"},
        "rule_files": [str(rules)],
        "alerting": {"alertmanagers": [
            {"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}]},
        "scrape_configs": jobs,
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _job(name: str, ports: list[int]) -> dict[str, Any]:
    return {"job_name": name,
            "static_configs": [{"targets": [f"127.0.0.1:{p}" for p in ports]}]}


def write_alertmanager_config(path: Path, receiver_port: int) -> None:
    """Route every alert to the lab's webhook receiver (which stores it in the inbox)."""
    config = {
        "route": {"receiver": "lab-inbox", "group_wait": "2s", "group_interval": "10s",
                  "repeat_interval": "1h"},
        "receivers": [{"name": "lab-inbox", "webhook_configs": [
            {"url": f"http://127.0.0.1:{receiver_port}/alertmanager", "send_resolved": True}]}],
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
