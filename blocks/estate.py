"""The estate file: where each system is, with no secret in it (docs/production.md).

`phasegate blocks save --file estate.yaml` turns it into the Blocks `<prefix>-*` that every flow
loads. Each top-level key names one Block and holds that Block's fields; `gpu_hosts` holds one
GpuHost per plan host; `notifications` is a Slack webhook (`kind: slack`) or any webhook
(`kind: webhook`). A field's value may be a reference instead of a literal:

    {env: NAME}      the value of environment variable NAME
    {file: PATH}     the contents of a file (an SSH key, known_hosts lines)
    {prompt: true}   asked for on the terminal, not echoed

A secret field (a SecretStr: passwords, tokens, private keys, webhook URLs) must be a
reference: a literal secret in the file is refused, so the file can live in git.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from prefect.blocks.core import Block
from prefect.blocks.notifications import CustomWebhookNotificationBlock, SlackWebhook
from pydantic import SecretStr, ValidationError

from phasegate.blocks.systems import (
    GcpConnection,
    GpuHost,
    HttpEndpoint,
    PostgresConnection,
    PrometheusConnection,
    RedisConnection,
    ReportStore,
)
from phasegate.errors import ConfigError

__all__ = ["EstateBlock", "Prompt", "describe", "estate_blocks", "read_estate"]

Prompt = Callable[[str], str]  # asks for a secret on the terminal (getpass)

_SYSTEMS: dict[str, type[Block]] = {
    "postgres": PostgresConnection, "redis": RedisConnection,
    "prometheus": PrometheusConnection, "alertmanager": HttpEndpoint, "api": HttpEndpoint,
    "gcp": GcpConnection, "reports": ReportStore,
}
_NOTIFIERS: dict[str, type[Block]] = {"slack": SlackWebhook,
                                      "webhook": CustomWebhookNotificationBlock}
_REFERENCE_KEYS = frozenset({"env", "file", "prompt"})


@dataclass(frozen=True)
class EstateBlock:
    """One Block to save: its name, the Block, and where each field came from (a reference
    such as "env:PG_PASSWORD" for resolved fields; never a secret's value)."""

    name: str
    block: Block
    sources: Mapping[str, str]

    @property
    def ref(self) -> str:
        """`<block-type-slug>/<name>`, the form a notifications parameter takes."""
        return f"{self.block.get_block_type_slug()}/{self.name}"


def read_estate(path: Path) -> dict[str, Any]:
    """The estate file as a mapping; ConfigError when it is not one."""
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: expected a mapping of systems")
    return doc


def estate_blocks(doc: Mapping[str, Any], prefix: str, prompt: Prompt) -> list[EstateBlock]:
    """Every Block the estate file describes, validated and with references resolved."""
    unknown = set(doc) - set(_SYSTEMS) - {"gpu_hosts", "notifications", "prefix"}
    if unknown:
        raise ConfigError(f"unknown systems in the estate file: {', '.join(sorted(unknown))}")
    out = [_block(f"{prefix}-{key}", _SYSTEMS[key], doc[key], prompt)
           for key in _SYSTEMS if key in doc]
    for host, fields in (doc.get("gpu_hosts") or {}).items():
        out.append(_block(f"{prefix}-{host}", GpuHost, {"name": host, **fields}, prompt))
    if "notifications" in doc:
        fields = dict(doc["notifications"])
        kind = fields.pop("kind", None)
        if kind not in _NOTIFIERS:
            raise ConfigError(f"notifications.kind must be one of {sorted(_NOTIFIERS)}")
        out.append(_block(f"{prefix}-notifications", _NOTIFIERS[kind], fields, prompt))
    return out


def _block(name: str, cls: type[Block], fields: Any, prompt: Prompt) -> EstateBlock:
    if not isinstance(fields, dict):
        raise ConfigError(f"{name}: expected a mapping of {cls.__name__} fields")
    values, sources = {}, {}
    for key, raw in fields.items():
        if _is_reference(raw):
            values[key], sources[key] = _resolve(name, key, raw, prompt)
        elif _is_secret(cls, key):
            raise ConfigError(f"{name}.{key} is a secret: give it as {{env: NAME}}, "
                              "{file: PATH} or {prompt: true}, never in the file")
        else:
            values[key] = raw
    try:
        return EstateBlock(name, cls(**values), sources)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"{name} ({cls.__name__}): {problems}") from None


def _is_reference(raw: Any) -> bool:
    return isinstance(raw, dict) and len(raw) == 1 and set(raw) <= _REFERENCE_KEYS


def _is_secret(cls: type[Block], key: str) -> bool:
    field = cls.model_fields.get(key)
    return field is not None and "SecretStr" in str(field.annotation)


def _resolve(name: str, key: str, ref: dict[str, Any], prompt: Prompt) -> tuple[str, str]:
    """(value, where it came from) for one reference."""
    kind, target = next(iter(ref.items()))
    if kind == "env":
        value = os.environ.get(str(target))
        if value is None:
            raise ConfigError(f"{name}.{key}: environment variable {target} is not set")
        return value, f"env:{target}"
    if kind == "file":
        path = Path(str(target)).expanduser()
        try:
            return path.read_text(encoding="utf-8"), f"file:{path}"
        except OSError as exc:
            raise ConfigError(f"{name}.{key}: {exc}") from exc
    return prompt(f"{name}.{key}: "), "prompt"


def describe(entry: EstateBlock) -> str:
    """One line per Block for the terminal: name, type, and the references used (a secret's
    value is never shown)."""
    secrets = [f"{k}<-{v}" for k, v in entry.sources.items()]
    shown = {k: v for k, v in entry.block.model_dump().items()
             if not isinstance(v, SecretStr) and k not in entry.sources and v is not None}
    return (f"{entry.name:<24} {type(entry.block).__name__:<32} "
            f"{', '.join(secrets) or '-'}  {_short(shown)}")


def _short(values: Mapping[str, Any]) -> str:
    text = ", ".join(f"{k}={v}" for k, v in values.items() if k != "block_type_slug")
    return text if len(text) < 80 else text[:77] + "..."
