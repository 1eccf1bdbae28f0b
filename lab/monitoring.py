"""Prometheus and Alertmanager configuration for the lab (scrape jobs per lab/README.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

__all__ = ["SCRAPE_INTERVAL_S", "write_alertmanager_config", "write_prometheus_config"]

SCRAPE_INTERVAL_S = 2  # short, so a time-compressed watch has data (min_window 5s)

# A lab-only rule: a scrape target of the lab is down. Scaling alert rules come from the plan.
_LAB_RULES = {
    "groups": [{
        "name": "lab",
        "rules": [{
            "alert": "LabTargetDown",
            "expr": 'up{job=~"api|dcgm|infra"} == 0',
            "for": "30s",
            "labels": {"severity": "warning"},
            "annotations": {"summary": "lab target {{ $labels.job }} is down"},
        }],
    }],
}


def write_prometheus_config(path: Path, ports: dict[str, int], vllm_targets: dict[str, int],
                            alertmanager_port: int) -> None:
    """Write prometheus.yml: jobs api, vllm (one target per GPU host), dcgm, infra."""
    jobs: list[dict[str, Any]] = [
        _job("api", [ports["api"]]),
        _job("dcgm", [ports["gpu_exporter"]]),
        _job("infra", [ports["infra_exporter"]]),
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
