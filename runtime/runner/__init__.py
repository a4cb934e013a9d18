"""crewship's in-crew runner: loads one CrewAI project and serves the daemon's internal API.

The builder copies this package into every release as ``crewship_runner/``; the supervisor
starts it with the release's own interpreter (which has crewai, the daemon never does)::

    python RELEASE/crewship_runner --app-dir APP --kind crew|json_crew|flow|declarative_flow|entrypoint
        --package PKG [--definition REL_PATH] [--entrypoint pkg.mod:callable]
        --host 127.0.0.1 --port N --instance v3.1 [--secret-file PATH]   (secret on stdin)

Standard library only (crewai is imported lazily), Python 3.10+; the modules import each
other relatively, so the package runs under any name. The crew is loaded before the port
is bound, so a crew that cannot load exits non-zero with its traceback.

- ``signing``: the daemon channel. The instance's secret comes once on stdin (or a read-only
  ``--secret-file``), never in argv or env; every request must carry ``X-Crewship-Signature``
  (an HMAC of time, nonce, method, path and body) or gets 401, and every reply carries
  ``X-Crewship-Proof`` (an HMAC of that signature, status and body): the secret never crosses
  the wire and a process that took the port cannot pass for the instance. The daemon
  imports this module (``runtime.runner.signing``) for its side of the channel.
- ``output``: one ``<ISO-8601 UTC ms>Z [<instance>] <text>`` line per write on the
  inherited stdout/stderr.
- ``project``: finding and loading the crew, flow or entrypoint; ``flows``: inputs, state
  ids and trigger payloads; ``webhooks``: task/step webhook bodies recorded for the daemon;
  ``events``: crewAI's event bus per run, the execution trace and the streamed events.
- ``runs``: the runs of one instance; ``server``: the HTTP API and ``main``.
- ``human``: human input (a ``human_input=True`` task, a flow's ``@human_feedback``): the
  run waits on its gate, reported as ``PENDING_HUMAN_INPUT``, until the daemon resumes it.
- ``preload``: ``python RELEASE/crewship_runner preload --control DIR --daemon-uid N``, an
  app environment's preloaded parent: imports crewai once and forks instances that each
  run ``server.main`` as a cold start would (the daemon side is runtime/preload.py).

HTTP API (JSON): ``GET /healthz``, ``GET /inputs``, ``POST /runs`` (``{"kickoff_id", "inputs",
"webhooks": {"task": true, "step": true, "events": ["task_completed", ...]}, "meta"}``: 202
at once, idempotent per kickoff id; the runner records task/step webhook bodies and the
named crewAI events, the daemon delivers them), ``GET /runs/{id}?wait=S&after=N&trace=1``
(long poll, answered early on a new webhook body; with ``after``: the webhook bodies from
number N on; with ``trace=1``: a running run's spans so far; a finished run's ``trace``
comes with its result), ``POST /runs/{id}/stop``, ``POST /runs/{id}/resume``
(``{"task_id", "human_feedback", "is_approve", "round"}``: the answer to a run waiting for
a human; ``GET /runs/{id}?human=V`` also ends its long poll when such a wait starts or
ends), ``POST /runs/{id}/ack`` (the daemon stored the result). Finished
results are kept until acknowledged, so a restarted daemon still collects them.
SIGTERM/SIGINT: refuse new runs (503), let running ones finish and be collected, exit 0.
"""
