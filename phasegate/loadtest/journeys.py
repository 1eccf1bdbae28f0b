"""What a VU does in one iteration: the seed's user journey, the LLM journey, one request.

A scenario's `exec` names its journey; its `env` parameterises it (k6's `__ENV`):

- `journey` (the seed's load_test.js): GET /v1/questions?subject=math, sleep 1, POST
  /v1/feedback {question_id, user_answer}, sleep 2; checks "status is 200", "response time <
  500ms", "AI feedback success", "AI response time < 5s". `errors` gets one sample per check
  group: 1 when a check failed, 0 otherwise. (The seed writes `check(...) || errorRate.add(1)`,
  which adds only failures, so its `rate<0.01` would read 100 % after the first failure and
  "no data" otherwise; counting the passes too gives the error share the seed means.)
- `llm` (the seed's gpu_load_test.py, streaming): POST /v1/completions (env MODE=completions)
  or /v1/chat/completions (MODE=chat) with stream true; llm_ttft, llm_itl (every gap between
  token events), llm_e2e, llm_tokens, llm_tokens_per_s (tokens / e2e seconds), llm_errors.
  env: MODEL, MAX_TOKENS, PROMPT (else the seed's prompts, in Korean, round robin).
- `request`: one request, env METHOD (GET), PATH (/), BODY (JSON text, optional), NAME.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable

from phasegate.loadtest.vu import Iteration

__all__ = ["JOURNEYS", "SEED_PROMPTS", "Journey", "journey", "llm", "single_request"]

Journey = Callable[[Iteration], Awaitable[None]]

# The seed's gpu_load_test.py prompts, as the Korean service sends them.
SEED_PROMPTS = (
    "이차방정식 x^2 + 5x + 6 = 0 을 풀어주세요.",
    "삼각함수의 미분을 설명해주세요.",
    "뉴턴의 운동 법칙을 설명해주세요.",
)
FEEDBACK_BODY = json.dumps({"question_id": "q123", "user_answer": "x = 5"}).encode()


async def journey(it: Iteration) -> None:
    """The seed's k6 default function, request for request and check for check."""
    res1 = await it.request("GET", "/v1/questions?subject=math", name="questions")
    ok1 = it.check("status is 200", res1.status == 200)
    ok1 &= it.check("response time < 500ms", res1.duration_ms < 500)
    it.add("errors", 0 if ok1 else 1)
    await it.sleep(1)
    res2 = await it.request("POST", "/v1/feedback", FEEDBACK_BODY, name="feedback")
    ok2 = it.check("AI feedback success", res2.status == 200)
    ok2 &= it.check("AI response time < 5s", res2.duration_ms < 5000)
    it.add("errors", 0 if ok2 else 1)
    await it.sleep(2)


async def single_request(it: Iteration) -> None:
    """One request from env METHOD/PATH/BODY/NAME (the CLI's ad-hoc `--path` runs)."""
    env = it.env
    body = env.get("BODY", "").encode()
    await it.request(env.get("METHOD", "GET").upper(), env.get("PATH", "/"), body,
                     name=env.get("NAME", ""))


class _SseTokens:
    """Counts token events in an OpenAI-style SSE stream, with their arrival times."""

    def __init__(self) -> None:
        self.buffer = b""
        self.times: list[float] = []
        self.done = False

    def __call__(self, data: bytes, t: float) -> None:
        self.buffer += data
        *events, self.buffer = self.buffer.split(b"\n\n")
        for event in events:
            payload = event.strip().removeprefix(b"data:").strip()
            if payload == b"[DONE]":
                self.done = True
            elif payload and _has_text(payload):
                self.times.append(t)


def _has_text(payload: bytes) -> bool:
    """Whether an SSE event carries generated text (role-only and usage events do not)."""
    try:
        choices = json.loads(payload).get("choices") or []
    except (ValueError, AttributeError):
        return False
    for choice in choices:
        if choice.get("text") or (choice.get("delta") or {}).get("content"):
            return True
    return False


def _llm_body(it: Iteration, chat: bool) -> bytes:
    prompt = it.env.get("PROMPT") or SEED_PROMPTS[
        (it.vu.id + it.vu.iterations) % len(SEED_PROMPTS)]
    body: dict[str, object] = {"model": it.env.get("MODEL", "llama"), "stream": True,
                               "max_tokens": int(it.env.get("MAX_TOKENS", "200"))}
    if chat:
        body["messages"] = [{"role": "user", "content": prompt}]
    else:
        body["prompt"] = prompt
    return json.dumps(body, ensure_ascii=False).encode()


async def llm(it: Iteration) -> None:
    """One streamed generation; TTFT and e2e count from the intended send time."""
    chat = it.env.get("MODE", "completions") == "chat"
    path = "/v1/chat/completions" if chat else "/v1/completions"
    tokens = _SseTokens()
    start = min(time.monotonic(), it.intended)
    res = await it.request("POST", path, _llm_body(it, chat), name="chat" if chat else
                           "completions", sink=tokens,
                           timeout_s=float(it.env.get("TIMEOUT_S", "120")))
    ok = res.status == 200 and tokens.done and bool(tokens.times)
    it.add("llm_errors", 0 if ok else 1)
    if not ok:
        return
    e2e_s = res.latency_ms / 1000.0
    it.add("llm_ttft", (tokens.times[0] - start) * 1000.0)
    for a, b in zip(tokens.times, tokens.times[1:], strict=False):
        it.add("llm_itl", (b - a) * 1000.0)
    it.add("llm_e2e", res.latency_ms)
    it.add("llm_tokens", len(tokens.times))
    it.add("llm_tokens_per_s", len(tokens.times) / e2e_s if e2e_s > 0 else 0.0)


JOURNEYS: dict[str, Journey] = {"journey": journey, "llm": llm, "request": single_request}
