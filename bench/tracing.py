"""What recording a run's trace and streamed events costs crewAI's event bus.

In a real crew environment (the classic_crew fixture's, crewai as the release has it),
pairs of real ``llm_call_started``/``llm_call_completed`` events (with messages, a
response and token usage, as an LLM call emits them) are emitted through
``crewai_event_bus`` three ways, in the same process: with no sink (the baseline: what
crewAI does anyway), with the runner's ``Recorder`` as the run's sink (the trace), and
with the ``Recorder`` also streaming both event types (``webhooks.events``). Rounds
interleave the three; the best round of each counts. The ratio is the cost per event
with recording over the cost without.

    python -m bench --only tracing             # or: python -m bench.tracing [PAIRS]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from builder.release import copy_runner
from tests.support.crewenv import prepare

NAME = "tracing"
PAIRS = 300     # LLM-call event pairs per round; rounds interleave the three ways
ROUNDS = 15
GOAL = 3.0  # recording may cost at most this many times what emitting an event costs

SCRIPT = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
from crewship_runner.events import Recorder
from crewship_runner.webhooks import WebhookLog
from crewai.events import crewai_event_bus
from crewai.events.stream_context import add_stream_sink, reset_stream_sinks
from crewai.events.types.llm_events import (LLMCallCompletedEvent, LLMCallStartedEvent,
                                            LLMCallType)

pairs = int(sys.argv[2])
messages = [{"role": "system", "content": "You are a researcher. " * 20},
            {"role": "user", "content": "Research kelp forests for otters. " * 20}]
usage = {"prompt_tokens": 120, "completion_tokens": 60, "total_tokens": 180}

def emit(n):
    for i in range(n):
        crewai_event_bus.emit(None, LLMCallStartedEvent(messages=messages, model="gpt-4o-mini",
                                                        call_id=str(i)))
        crewai_event_bus.emit(None, LLMCallCompletedEvent(
            messages=messages, response="Final Answer: kelp " * 30, model="gpt-4o-mini",
            call_type=LLMCallType.LLM_CALL, call_id=str(i), usage=usage))

def timed(recorder):
    token = add_stream_sink(recorder.sink) if recorder else None
    try:
        started = time.perf_counter()
        emit(pairs)
        return (time.perf_counter() - started) / (2 * pairs)
    finally:
        if token is not None:
            reset_stream_sinks(token)

emit(200)  # warm up (imports, caches)
best = {"none": [], "trace": [], "trace+stream": []}
for _ in range(int(sys.argv[3])):
    best["none"].append(timed(None))
    best["trace"].append(timed(Recorder("k", None)))
    log = WebhookLog({"events": ["llm_call_started", "llm_call_completed"]}, "k", None)
    recorder = Recorder("k", log)
    best["trace+stream"].append(timed(recorder))
assert len(recorder.spans) == pairs and len(log.events) == 2 * pairs
print(json.dumps({k: min(v) for k, v in best.items()}))
"""


def measure(pairs: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="crewship-bench-tracing-") as tmp:
        _, python = prepare("classic_crew", Path(tmp))
        copy_runner(Path(__file__).resolve().parents[1] / "runtime" / "runner",
                    Path(tmp) / "crewship_runner")
        out = subprocess.run([str(python), "-c", SCRIPT, tmp, str(pairs), str(ROUNDS)],
                             capture_output=True,
                             text=True, check=True, timeout=600,
                             env={"PATH": "/usr/bin:/bin", "HOME": tmp,
                                  "CREWAI_DISABLE_TELEMETRY": "true", "OTEL_SDK_DISABLED": "true",
                                  "CREWAI_TRACING_ENABLED": "false"})
        return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def run(small_runs: int = 5) -> list[dict[str, Any]]:
    costs = measure(PAIRS)
    base = costs["none"]
    return [{"benchmark": NAME, "case": f"one crewAI event emitted, {case}", "runs": ROUNDS,
             "unit": "us", "crewship_s": costs[case] * 1e6, "baseline_s": base * 1e6,
             "baseline": "no sink", "ratio": costs[case] / base, "goal": GOAL,
             "met": costs[case] / base <= GOAL}
            for case in ("trace", "trace+stream")]


if __name__ == "__main__":
    pairs = int(sys.argv[1]) if len(sys.argv) > 1 else PAIRS
    result = measure(pairs)
    print(json.dumps({**result, "ratio_trace": result["trace"] / result["none"],
                      "ratio_stream": result["trace+stream"] / result["none"]}, indent=1))
