"""Google Cloud REST emulator: Cloud Run Admin v2 services and Compute Engine v1 instances.

`python -m lab.gcp_emulator --port P --lab-dir D [--project dreamseed-prod --region
asia-northeast3 --zone asia-northeast3-a --service dreamseed-api]` serves, on 127.0.0.1, the
REST surface the unmodified `google-cloud-run` (transport="rest") and `google-cloud-compute`
clients use with `client_options={"api_endpoint": "http://127.0.0.1:P"}`.

State lives in `<lab>/gcp/state.json` (a restart keeps it); what each service's serving
revision runs with (its container env, changed only when a rollout completes) is mirrored to
`<lab>/gcp/serving.json` for the API simulator. `<lab>/gcp/seed.json`, if present,
is deep-merged over the seeded service's fields (first start and `POST /_lab/reset`). Every API
request is appended to `<lab>/gcp/requests.jsonl` (method, path, query, body, status, time);
`GET /_lab/requests` returns them, `POST /_lab/reset` restores the seeded state and clears the
log. Faults from `lab.control`: compute/stockout, cloudrun/erroring. Time-based transitions
(rollouts, instance start-up) are applied lazily on each request from stored deadlines.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from phasegate.lab import gcp_cloudrun as run
from phasegate.lab import gcp_compute as gce
from phasegate.lab.control import JsonFile, write_json_atomic
from phasegate.lab.layout import LabLayout

__all__ = ["Emulator", "Settings", "build_app", "main"]

log = logging.getLogger("phasegate.lab.gcp_emulator")
Reply = tuple[int, Any]
Handler = Callable[[re.Match[str], dict[str, str], Any], Awaitable[Reply]]
_LOC = r"/v2/projects/([^/]+)/locations/([^/]+)"
_ZONE = r"/compute/v1/projects/([^/]+)/zones/([^/]+)"


@dataclass(frozen=True)
class Settings:
    """What the emulator seeds and how fast its simulated world moves."""

    project: str = "dreamseed-prod"
    region: str = "asia-northeast3"
    zone: str = "asia-northeast3-a"
    service: str = "dreamseed-api"
    rollout_delay: float = 0.3
    compute_delay: float = 0.4
    wait_max: float = 5.0
    api_env: tuple[tuple[str, str], ...] = ()   # the seeded service container's env


class Emulator:
    """The emulated APIs over one lab directory's `gcp/` state."""

    def __init__(self, layout: LabLayout, settings: Settings) -> None:
        self.layout, self.settings = layout, settings
        self.dir = layout.gcp_dir
        self.state_file = self.dir / "state.json"
        self.log_file = self.dir / "requests.jsonl"
        self._faults = JsonFile(layout.faults_file, {})
        self.state = self._load()
        self.routes: list[tuple[str, re.Pattern[str], Handler]] = self._routes()

    # ---- state -------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        try:
            state = json.loads(self.state_file.read_text())
            if isinstance(state, dict) and {"run", "compute"} <= state.keys():
                return state
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.warning("unreadable %s (%s); reseeding", self.state_file, exc)
        state = self._seeded()
        write_json_atomic(self.state_file, state)
        write_json_atomic(self.layout.cloud_run_serving_file, run.serving(state["run"]))
        return state

    def _seeded(self) -> dict[str, Any]:
        s = self.settings
        seed_file = self.dir / "seed.json"
        overrides = json.loads(seed_file.read_text()) if seed_file.exists() else {}
        svc = run.seed_service(s.project, s.region, s.service, time.time(), overrides,
                               dict(s.api_env))
        state_run = run.new_state()
        state_run["services"][svc["name"]] = svc
        return {"run": state_run, "compute": gce.new_state()}

    def save(self) -> None:
        """Persist the state atomically, and what the serving revisions run with."""
        write_json_atomic(self.state_file, self.state)
        write_json_atomic(self.layout.cloud_run_serving_file, run.serving(self.state["run"]))

    def reset(self) -> None:
        """Back to the seeded state, with an empty request log."""
        self.state = self._seeded()
        self.save()
        self.log_file.unlink(missing_ok=True)

    def tick(self) -> None:
        """Apply every time-based transition that is due."""
        now = time.time()
        changed = run.tick(self.state["run"], now)
        changed = gce.tick(self.state["compute"], now) or changed
        if changed:
            self.save()

    def fault(self, component: str, name: str) -> bool:
        """True if `component`'s fault `name` is switched on in control/faults.json."""
        faults = self._faults.read()
        return isinstance(faults, dict) and name in (faults.get(component) or {})

    def record(self, request: Request, body: Any, status: int) -> None:
        """Append one request to the request log."""
        entry = {"method": request.method, "path": request.url.path,
                 "query": dict(request.query_params), "body": body, "status": status,
                 "time": time.time()}
        with open(self.log_file, "a") as fh:
            fh.write(json.dumps(entry, sort_keys=True) + "\n")

    def requests(self) -> list[dict[str, Any]]:
        """Every logged request, oldest first."""
        if not self.log_file.exists():
            return []
        return [json.loads(line) for line in self.log_file.read_text().splitlines() if line]

    # ---- routing -----------------------------------------------------------------------

    def _routes(self) -> list[tuple[str, re.Pattern[str], Handler]]:
        table: list[tuple[str, str, Handler]] = [
            ("GET", r"/_lab/requests", self.lab_requests),
            ("POST", r"/_lab/reset", self.lab_reset),
            ("GET", _LOC + r"/services", self.run_list),
            ("GET", _LOC + r"/services/([^/:]+)", self.run_get),
            ("PATCH", _LOC + r"/services/([^/:]+)", self.run_patch),
            ("GET", _LOC + r"/operations", self.run_list_ops),
            ("GET", _LOC + r"/operations/([^/:]+)", self.run_get_op),
            ("POST", _LOC + r"/operations/([^/:]+):wait", self.run_wait_op),
            ("POST", _ZONE + r"/instances", self.gce_insert),
            ("GET", _ZONE + r"/instances", self.gce_list),
            ("GET", _ZONE + r"/instances/([^/]+)", self.gce_get),
            ("DELETE", _ZONE + r"/instances/([^/]+)", self.gce_delete),
            ("GET", _ZONE + r"/operations/([^/]+)", self.gce_get_op),
            ("POST", _ZONE + r"/operations/([^/]+)/wait", self.gce_wait_op),
        ]
        return [(m, re.compile(p + "$"), h) for m, p, h in table]

    def _find(self, method: str, path: str) -> tuple[Handler, re.Match[str]] | None:
        for m, pattern, handler in self.routes:
            match = pattern.match(path)
            if match and m == method:
                return handler, match
        return None

    async def dispatch(self, request: Request) -> JSONResponse:
        """Route one HTTP request, log it, and answer with JSON."""
        path = request.url.path
        raw = await request.body()
        try:
            body: Any = json.loads(raw) if raw.strip() else None
        except ValueError:
            body = raw.decode(errors="replace")
        status, payload = await self._answer(request.method, path,
                                             dict(request.query_params), body)
        if not path.startswith("/_lab/"):
            self.record(request, body, status)
        return JSONResponse(payload, status_code=status)

    async def _answer(self, method: str, path: str, query: dict[str, str], body: Any) -> Reply:
        compute = path.startswith("/compute/")
        found = self._find(method, path)
        try:
            if found is None:
                raise (gce.ComputeError(404, "notFound", f"No such method: {method} {path}")
                       if compute else run.RunError(404, "NOT_FOUND", f"{method} {path}"))
            if isinstance(body, str):
                raise (gce.ComputeError(400, "parseError", "Parse Error") if compute
                       else run.RunError(400, "INVALID_ARGUMENT", "Invalid JSON payload."))
            self.tick()
            handler, match = found
            return await handler(match, query, body)
        except (run.RunError, gce.ComputeError) as exc:
            return exc.code, exc.body()

    async def _wait(self, done: Callable[[], bool], bound: float) -> None:
        deadline = time.monotonic() + max(0.0, min(bound, self.settings.wait_max))
        while True:
            self.tick()
            if done() or time.monotonic() >= deadline:
                return
            await asyncio.sleep(0.05)

    # ---- lab endpoints -----------------------------------------------------------------

    async def lab_requests(self, m: re.Match[str], q: dict[str, str], b: Any) -> Reply:
        """GET /_lab/requests: the request log."""
        return 200, {"requests": self.requests()}

    async def lab_reset(self, m: re.Match[str], q: dict[str, str], b: Any) -> Reply:
        """POST /_lab/reset: the seeded state again."""
        self.reset()
        return 200, {"reset": True}

    # ---- Cloud Run v2 ------------------------------------------------------------------

    async def run_get(self, m: re.Match[str], q: dict[str, str], b: Any) -> Reply:
        """GET services/S."""
        name = f"projects/{m[1]}/locations/{m[2]}/services/{m[3]}"
        return 200, run.get_service(self.state["run"], name)

    async def run_list(self, m: re.Match[str], q: dict[str, str], b: Any) -> Reply:
        """GET services (pageSize, pageToken)."""
        parent = f"projects/{m[1]}/locations/{m[2]}"
        size = int(q.get("pageSize") or 0)
        return 200, run.list_services(self.state["run"], parent, size, q.get("pageToken", ""))

    async def run_patch(self, m: re.Match[str], q: dict[str, str], b: Any) -> Reply:
        """PATCH services/S: a rollout Operation, or 503 under the cloudrun/erroring fault."""
        if self.fault("cloudrun", "erroring"):
            raise run.RunError(503, "UNAVAILABLE", "The service is currently unavailable.")
        name = f"projects/{m[1]}/locations/{m[2]}/services/{m[3]}"
        op = run.patch_service(self.state["run"], name, b or {}, q, time.time(),
                               self.settings.rollout_delay)
        self.save()
        return 200, op

    async def run_list_ops(self, m: re.Match[str], q: dict[str, str], b: Any) -> Reply:
        """GET operations."""
        return 200, run.list_operations(self.state["run"], f"projects/{m[1]}/locations/{m[2]}")

    async def run_get_op(self, m: re.Match[str], q: dict[str, str], b: Any) -> Reply:
        """GET operations/ID."""
        name = f"projects/{m[1]}/locations/{m[2]}/operations/{m[3]}"
        return 200, run.get_operation(self.state["run"], name)

    async def run_wait_op(self, m: re.Match[str], q: dict[str, str], b: Any) -> Reply:
        """POST operations/ID:wait: block until done or the request's `timeout`."""
        name = f"projects/{m[1]}/locations/{m[2]}/operations/{m[3]}"
        run.get_operation(self.state["run"], name)
        timeout = str((b or {}).get("timeout", "")).rstrip("s")
        bound = float(timeout) if timeout else self.settings.wait_max
        await self._wait(lambda: run.operation_done(self.state["run"], name), bound)
        return 200, run.get_operation(self.state["run"], name)

    # ---- Compute v1 --------------------------------------------------------------------

    async def gce_insert(self, m: re.Match[str], q: dict[str, str], b: Any) -> Reply:
        """POST instances: a zone Operation (stockout fault: it fails when DONE)."""
        stockout = self.fault("compute", "stockout")
        op = gce.insert_instance(self.state["compute"], m[1], m[2], b or {}, time.time(),
                                 self.settings.compute_delay, stockout)
        self.save()
        return 200, op

    async def gce_list(self, m: re.Match[str], q: dict[str, str], b: Any) -> Reply:
        """GET instances (filter, maxResults, pageToken)."""
        return 200, gce.list_instances(self.state["compute"], m[1], m[2], q)

    async def gce_get(self, m: re.Match[str], q: dict[str, str], b: Any) -> Reply:
        """GET instances/NAME."""
        return 200, gce.get_instance(self.state["compute"], m[1], m[2], m[3])

    async def gce_delete(self, m: re.Match[str], q: dict[str, str], b: Any) -> Reply:
        """DELETE instances/NAME: a zone Operation."""
        op = gce.delete_instance(self.state["compute"], m[1], m[2], m[3], time.time(),
                                 self.settings.compute_delay)
        self.save()
        return 200, op

    async def gce_get_op(self, m: re.Match[str], q: dict[str, str], b: Any) -> Reply:
        """GET operations/NAME."""
        return 200, gce.get_operation(self.state["compute"], m[1], m[2], m[3])

    async def gce_wait_op(self, m: re.Match[str], q: dict[str, str], b: Any) -> Reply:
        """POST operations/NAME/wait: until DONE or the emulator's bounded wait."""
        gce.get_operation(self.state["compute"], m[1], m[2], m[3])
        await self._wait(lambda: gce.operation_done(self.state["compute"], m[1], m[2], m[3]),
                         self.settings.wait_max)
        return 200, gce.get_operation(self.state["compute"], m[1], m[2], m[3])


def build_app(emulator: Emulator) -> Starlette:
    """The ASGI app: one catch-all route into `Emulator.dispatch`."""
    methods = ["GET", "POST", "PATCH", "PUT", "DELETE"]
    return Starlette(routes=[Route("/{path:path}", emulator.dispatch, methods=methods)])


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m lab.gcp_emulator", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = Settings()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--lab-dir", type=Path, required=True)
    p.add_argument("--project", default=d.project)
    p.add_argument("--region", default=d.region)
    p.add_argument("--zone", default=d.zone)
    p.add_argument("--service", default=d.service)
    p.add_argument("--rollout-delay", type=float, default=d.rollout_delay,
                   help="seconds until a Cloud Run update's operation is done")
    p.add_argument("--compute-delay", type=float, default=d.compute_delay,
                   help="seconds from instance insert to RUNNING (operation DONE at half)")
    p.add_argument("--wait-max", type=float, default=d.wait_max,
                   help="upper bound of one operations wait call, seconds")
    p.add_argument("--api-env", action="append", default=[], metavar="NAME=VALUE",
                   help="env of the seeded service's container (repeatable)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: serve until SIGTERM/SIGINT."""
    args = _parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    layout = LabLayout(args.lab_dir.resolve())
    layout.gcp_dir.mkdir(parents=True, exist_ok=True)
    env = tuple((k, v) for k, eq, v in (item.partition("=") for item in args.api_env) if eq)
    settings = Settings(args.project, args.region, args.zone, args.service,
                        args.rollout_delay, args.compute_delay, args.wait_max, env)
    emulator = Emulator(layout, settings)
    log.info("gcp emulator on http://127.0.0.1:%d, state %s", args.port, emulator.state_file)
    uvicorn.run(build_app(emulator), host="127.0.0.1", port=args.port, log_level="info")


if __name__ == "__main__":
    main()
