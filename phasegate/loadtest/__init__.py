"""The load-test engine (issues 3 and 9; design and interface in docs/loadtest.md).

- `http`: the HTTP/1.1 keep-alive client (asyncio Protocol + httptools, http and https),
  chosen by measurement;
- `vu`: what an iteration sees (timed requests from the intended send time, checks, sleeps);
- `journeys`: the seed's user journey, the LLM streaming journey, a single request;
- `engine`: `run(options, target, scale=..., progress=...) -> RunResult`;
- `options`: Options from a plan phase, a scenario file or k6-like flags;
- `k6export`: the same test as a k6 script;
- `k6run`: a k6 script run by the real k6, its samples judged by our thresholds.

The pure half (scenario models and schedules, metric sinks, thresholds, summary) lives in
policy/loadtest/.
"""
