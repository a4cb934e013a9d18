"""The three measurements at the top of issue 12, repeated: ``python -m bench.issue12``.

1. 200 kickoffs posted at concurrency 20 to one instance: how many end FAILURE?
2. kill -9 of the daemon while 60 kickoffs are in flight, then a restart: how many of
   them are collected (SUCCESS) and how many thrown away?
3. kill -9 of a crew instance: what does ``POST /kickoff`` answer meanwhile (posted
   every 50 ms for 10 s), and how do the kickoffs accepted then end?

Same setup as bench/chaos.py (a fresh server per measurement, the classic crew on the
fake LLM, loopback only).
"""

from __future__ import annotations

import collections
import os
import signal
import sys
import time

import httpx

from bench.chaos import (
    Context,
    Sizes,
    context,
    deploy_crew,
    instances,
    wait_until,
)
from bench.chaosload import SETTLE, Load


def burst_on_one_instance(ctx: Context) -> str:
    srv = ctx.server("one-instance")
    client = deploy_crew(ctx, srv, scale=1)
    started = time.monotonic()
    load = Load(client, 20, 200).start()
    wait_until(lambda: len(load.accepted) >= 200, SETTLE * 3)
    load.finish()
    row = load.row("", started)
    return (f"1. 200 kickoffs at concurrency 20, one instance: accepted {row.accepted}, "
            f"SUCCESS {row.succeeded}, FAILURE {row.failed}, lost {row.lost} "
            f"({row.seconds:.0f} s)")


def daemon_kill_with_60_in_flight(ctx: Context) -> str:
    srv = ctx.server("daemon-60")
    client = deploy_crew(ctx, srv, scale=1)
    ctx.llm.delay = 1.0
    try:
        with httpx.Client(timeout=30, trust_env=False) as http:
            ids = [kid for kid, _ in (client.kickoff(http) for _ in range(60)) if kid]
            time.sleep(2.0)
            states = collections.Counter(client.state(http, k) for k in ids)
            assert srv.proc is not None
            os.kill(srv.pid, signal.SIGKILL)
            srv.proc.wait(30)
            srv.proc = None
            srv.start(timeout=120)
            wait_until(lambda: all(client.state(http, k) in ("SUCCESS", "FAILURE", "REVOKED")
                                   for k in ids), SETTLE)
            final = collections.Counter(client.state(http, k) for k in ids)
    finally:
        ctx.llm.delay = 0.0
    return (f"2. kill -9 of the daemon with {len(ids)} kickoffs in flight "
            f"({states.get('RUNNING', 0)} RUNNING, {states.get('PENDING', 0)} PENDING), restart: "
            f"SUCCESS {final.get('SUCCESS', 0)}, FAILURE {final.get('FAILURE', 0)}, "
            f"other {sum(final.values()) - final.get('SUCCESS', 0) - final.get('FAILURE', 0)}")


def kickoffs_during_a_crash_restart(ctx: Context) -> str:
    srv = ctx.server("crash-restart")
    client = deploy_crew(ctx, srv, scale=1)
    (up,) = [i for i in instances(srv) if i["state"] == "up"]
    answers: collections.Counter[int] = collections.Counter()
    accepted = []
    with httpx.Client(timeout=30, trust_env=False) as http:
        os.kill(int(up["pid"]), signal.SIGKILL)
        killed = time.monotonic()
        while time.monotonic() - killed < 10:
            kickoff_id, status = client.kickoff(http)
            answers[status] += 1
            if kickoff_id:
                accepted.append(kickoff_id)
            time.sleep(0.05)
        wait_until(lambda: all(client.state(http, k) in ("SUCCESS", "FAILURE") for k in accepted),
                   SETTLE)
        final = collections.Counter(client.state(http, k) for k in accepted)
    shown = ", ".join(f"{code}: {n}" for code, n in sorted(answers.items()))
    return (f"3. kill -9 of the crew, POST /kickoff every 50 ms for 10 s: answers {{{shown}}}; "
            f"the accepted ones ended SUCCESS {final.get('SUCCESS', 0)}, "
            f"FAILURE {final.get('FAILURE', 0)}")


def main() -> int:
    for measure in (burst_on_one_instance, daemon_kill_with_60_in_flight,
                    kickoffs_during_a_crash_restart):
        with context("process", Sizes()) as ctx:
            print(measure(ctx), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
