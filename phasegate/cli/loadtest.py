"""`phasegate loadtest run|export-k6`: the load-test engine from the command line.

    phasegate loadtest run SCENARIO|--phase N --target URL [--scale F] [--summary FILE]
        [--ca-file PATH | --insecure]
    phasegate loadtest run --executor constant-arrival-rate --rate 200 --duration 15s \\
        --path /v1/questions --threshold 'http_req_duration: p(95)<300' --target URL
    phasegate loadtest export-k6 --phase 2 --target URL [--scale F] [--out FILE]

SCENARIO is a YAML/JSON file in k6's options shape, or `phaseN` (the plan's phase N). Without
either, the k6-like flags build one scenario. The target is any http:// or https:// URL; an
https certificate is verified against the system CA store (`SSL_CERT_FILE` honoured) or
`--ca-file`; `--insecure` skips verification and says so. Exit code: 0 all thresholds pass, 99
any failed (k6's), 105 aborted for another reason, 1 for bad input or a refused certificate
(one line naming host and reason). A progress line on stderr each second.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Any

from phasegate.errors import ConfigError
from phasegate.policy.loadtest.scenario import Options

__all__ = ["build_options", "register"]

_PHASE = re.compile(r"phase(\d+)")


def register(sub: Any) -> None:
    """Add `loadtest run` and `loadtest export-k6`."""
    lt = sub.add_parser("loadtest", help="k6-grade load tests against an http(s) target")
    lsub = lt.add_subparsers(dest="loadtest_command", required=True)
    run = lsub.add_parser("run", help="run a load test; exit 0 pass, 99 threshold failed")
    _selection(run)
    run.add_argument("--summary", help="write the k6-layout JSON summary to this file")
    run.add_argument("--window", type=float, default=10.0, help="per-window verdict length (s)")
    run.add_argument("--ca-file", help="verify https against this CA bundle (PEM) instead of "
                     "the system store")
    run.add_argument("--insecure", action="store_true",
                     help="do not verify the https certificate (never the default; warns)")
    run.add_argument("--quiet", action="store_true", help="no live progress line")
    run.set_defaults(handler=_run)
    export = lsub.add_parser("export-k6", help="write an equivalent k6 script")
    _selection(export)
    export.add_argument("--out", help="file to write (default stdout)")
    export.set_defaults(handler=_export)


def _selection(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", nargs="?", help="options file (YAML/JSON) or phaseN")
    p.add_argument("--phase", type=int, help="the plan's phase N load test")
    p.add_argument("--plan", help="plan file (default plans/dreamseed.yaml)")
    p.add_argument("--target", default="http://127.0.0.1:8080", help="base URL, http(s)")
    p.add_argument("--scale", type=float, default=1.0,
                   help="time scale: scenario durations x F; think time and rates unchanged")
    p.add_argument("--executor", default="constant-vus")
    p.add_argument("--vus", type=int)
    p.add_argument("--max-vus", type=int)
    p.add_argument("--rate", type=int)
    p.add_argument("--time-unit", default="1s")
    p.add_argument("--duration", default="10s")
    p.add_argument("--stage", action="append", default=[], metavar="DURATION:TARGET",
                   help="ramping stage, repeatable (e.g. 30s:100)")
    p.add_argument("--path", help="one request per iteration to this path")
    p.add_argument("--method", default="GET")
    p.add_argument("--body", help="request body (JSON text)")
    p.add_argument("--llm", action="store_true", help="LLM mode: streamed completions")
    p.add_argument("--chat", action="store_true", help="LLM mode on /v1/chat/completions")
    p.add_argument("--model", default="llama")
    p.add_argument("--max-tokens", type=int, default=200)
    p.add_argument("--threshold", action="append", default=[], metavar="'METRIC: EXPR'",
                   help="k6 threshold, repeatable: 'http_req_duration{name:x}: p(95)<300'")


def _thresholds(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        key, sep, expr = item.rpartition(":")
        if not sep or not key.strip() or not expr.strip():
            raise ConfigError(f"--threshold {item!r}: expected 'METRIC: EXPRESSION'")
        out.setdefault(key.strip(), []).append(expr.strip())
    return out


def _adhoc_scenario(args: argparse.Namespace) -> dict[str, Any]:
    """k6 scenario fields from the flags (only those the executor takes)."""
    scenario: dict[str, Any] = {"executor": args.executor}
    stages = [{"duration": d, "target": int(t)} for d, _, t in
              (s.rpartition(":") for s in args.stage)]
    if "arrival-rate" in args.executor:
        vus = args.vus or max(1, args.rate or 1)
        scenario |= {"time_unit": args.time_unit, "pre_allocated_vus": vus,
                     "max_vus": args.max_vus or vus * 2}
    if args.executor == "constant-vus":
        scenario |= {"vus": args.vus or 1, "duration": args.duration}
    elif args.executor == "constant-arrival-rate":
        scenario |= {"rate": args.rate or 1, "duration": args.duration}
    else:
        scenario["stages"] = stages
    if args.llm or args.chat:
        scenario |= {"exec": "llm", "env": {"MODE": "chat" if args.chat else "completions",
                     "MODEL": args.model, "MAX_TOKENS": str(args.max_tokens)}}
    return scenario


def build_options(args: argparse.Namespace) -> Options:
    """The run's Options from a file, a phase, or the ad-hoc flags (extra --threshold flags
    are added to a file's or phase's thresholds)."""
    from phasegate.loadtest.options import adhoc_options, file_options, phase_options

    extra = _thresholds(args.threshold)
    match = _PHASE.fullmatch(args.scenario or "")
    phase = args.phase if args.phase is not None else int(match[1]) if match else None
    if phase is not None:
        options = phase_options(phase, args.plan)
    elif args.scenario:
        options = file_options(args.scenario)
    else:
        request = None if (args.llm or args.chat) else {
            "METHOD": args.method.upper(), "PATH": args.path or "/", "BODY": args.body or ""}
        return adhoc_options(_adhoc_scenario(args), extra, request=request)
    if not extra:
        return options
    from phasegate.policy.loadtest.scenario import parse_options

    merged = {**options.model_dump(mode="json")["thresholds"], **extra}
    return parse_options({"scenarios": {n: s.model_dump(mode="json")
                                        for n, s in options.scenarios.items()},
                          "thresholds": merged})


def _progress_printer() -> Any:
    def show(p: Any) -> None:
        sys.stderr.write("\r\x1b[K" + p.line())
        sys.stderr.flush()
    return show


def _run(args: argparse.Namespace) -> int:
    from phasegate.loadtest.engine import TlsOptions, run
    from phasegate.policy.loadtest.summary import render_text

    options = build_options(args)
    if args.insecure:
        sys.stderr.write("warning: --insecure: the target's TLS certificate is NOT verified\n")
    result = run(options, args.target, scale=args.scale, window_s=args.window,
                 tls=TlsOptions(args.ca_file, args.insecure),
                 progress=None if args.quiet else _progress_printer())
    if not args.quiet:
        sys.stderr.write("\n")
    print(render_text(result.summary))
    if args.summary:
        Path(args.summary).write_text(json.dumps(result.summary, indent=2, default=str))
    return result.exit_code


def _export(args: argparse.Namespace) -> int:
    from phasegate.loadtest.k6export import export_k6

    script = export_k6(build_options(args), args.target, scale=args.scale)
    if args.out:
        Path(args.out).write_text(script)
    else:
        print(script)
    return 0
