"""The swarm runtime's pure parts: a service's spec from an InstanceSpec, tasks as crewship
reads them, the service-log line split, placement constraints and the settings it adds."""

from __future__ import annotations

from pathlib import Path

import pytest

from crewship.config import from_env
from crewship.errors import InvalidInputError
from crewship.service.cluster import check_constraint
from crewship.service.dispatch import _release_of
from runtime.backend import InstanceSpec
from runtime.registry import config_text
from runtime.swarmlogs import split_details
from runtime.swarmspec import (
    SECRET_PATH,
    Rollout,
    Timings,
    parse_task,
    service_name,
    service_options,
    task_port,
    task_template,
)

SPEC = InstanceSpec(app="demo", release=3, index=1,
                    argv=["/app/.venv/bin/python", "/app/crewship_runner", "--app-dir", "/app",
                          "--port", "0", "--instance", "v3.1"],
                    env={"OPENAI_API_KEY": "sk-secret-value"}, cwd=Path("/app"), port=0,
                    image="sha256:abc", memory=512 * 1024 * 1024, cpus=0.5,
                    placement=("node.labels.pool==crews",))
ROLLOUT = Rollout("gen1", 31000, "secretid", "crewship-x-demo-v3-aa", "reg:5000/r@sha256:d")


def template() -> dict:  # type: ignore[type-arg]
    return task_template(SPEC, ROLLOUT, "serverhash", "127.0.0.1", Timings(30.0, 60.0, 1.0))


def test_the_task_runs_the_image_by_digest_on_host_networking_locked_down() -> None:
    spec = template()
    container = spec["ContainerSpec"]
    assert container["Image"] == "reg:5000/r@sha256:d"
    assert spec["Networks"] == [{"Target": "host"}]
    assert container["User"] == "10001:10001"
    assert container["ReadOnly"] is True
    assert container["CapabilityDrop"] == ["ALL"]
    assert container["Privileges"] == {"NoNewPrivileges": True}
    assert {m["Target"] for m in container["Mounts"]} == {"/tmp", "/crewship-home"}
    assert all(m["Type"] == "tmpfs" for m in container["Mounts"])
    assert spec["Resources"]["Limits"] == {"Pids": 1024, "MemoryBytes": 512 * 1024 * 1024,
                                           "NanoCPUs": 500_000_000}
    assert spec["Placement"] == {"Constraints": ["node.labels.pool==crews"]}
    assert spec["RestartPolicy"]["Condition"] == "any"
    assert container["StopGracePeriod"] == 60 * 10**9


def test_each_task_binds_base_plus_slot_and_reads_its_secret_from_a_docker_secret() -> None:
    container = template()["ContainerSpec"]
    env = dict(item.split("=", 1) for item in container["Env"])
    assert env["CREWSHIP_PORT_BASE"] == "31000"
    assert env["CREWSHIP_SLOT"] == "{{.Task.Slot}}"
    assert env["CREWSHIP_BIND"] == "127.0.0.1"
    assert env["CREWSHIP_TASK"] == "{{.Task.ID}}"
    command = container["Command"]
    assert command[:2] == ["/app/.venv/bin/python", "-c"]  # exec's the runner: PID 1
    assert "os.execv" in command[2]
    assert repr(SECRET_PATH) in command[2]
    assert command[3:] == SPEC.argv  # the runner's argv, then the task's own options win
    (secret,) = container["Secrets"]
    assert secret["SecretID"] == "secretid"
    assert secret["File"] == {"Name": "crewship", "UID": "10001", "GID": "10001", "Mode": 0o400}
    assert "sk-secret-value" not in " ".join(command)
    health = container["Healthcheck"]["Test"]
    assert health[:3] == ["CMD", "/app/.venv/bin/python", "-c"]
    assert health[-3:] == ["/app/crewship_runner", SECRET_PATH, "1"]  # the runner is PID 1


def test_rollouts_are_start_first_and_roll_back_on_failure() -> None:
    options = service_options(SPEC, ROLLOUT, "serverhash", 2)
    assert options["mode"] == {"Replicated": {"Replicas": 2}}
    assert options["update_config"]["Order"] == "start-first"
    assert options["update_config"]["FailureAction"] == "rollback"
    assert options["update_config"]["Parallelism"] == 1
    assert options["rollback_config"]["Order"] == "start-first"
    assert options["labels"]["crewship.server"] == "serverhash"
    assert service_name("0123456789abcdef", "demo") == "crewship-01234567-demo"


def raw_task(state: str, desired: str = "running", code: int | None = None,
             err: str = "") -> dict:  # type: ignore[type-arg]
    container = template()["ContainerSpec"]
    status = {"State": state, "Timestamp": "2026-12-01T10:43:22.856909706Z", "Err": err,
              "ContainerStatus": {"ContainerID": "c0ffee", **({"ExitCode": code}
                                                               if code is not None else {})}}
    return {"ID": "abcdefghijklmnopqrstuvwxy", "Slot": 2, "NodeID": "node1",
            "DesiredState": desired, "Status": status, "Spec": {"ContainerSpec": container}}


def test_a_task_is_read_with_its_port_release_and_instance_id() -> None:
    task = parse_task(raw_task("running"))
    assert task is not None
    assert (task.app, task.release, task.slot) == ("demo", 3, 2)
    assert task.port == task_port(31000, 2, "abcdefghijklmnopqrstuvwxy")
    assert 31200 <= task.port < 31300  # slot 2's span
    assert task.name == "v3.2"
    assert task.instance_id == "demo-v3.2-abcdefghij"
    assert _release_of(task.instance_id) == 3  # what the dispatcher records on kickoffs
    assert task.secret_name == "crewship-x-demo-v3-aa"
    assert task.serving
    assert not task.crashed
    assert abs(task.changed_at - 1796121802.856909) < 1e-3


def test_crashes_are_told_apart_from_rollouts_stopping_a_task() -> None:
    killed = parse_task(raw_task("failed", "shutdown", 137, "task: non-zero exit (137)"))
    assert killed is not None
    assert killed.crashed
    assert not killed.serving
    exited_alone = parse_task(raw_task("complete", "running", 0))
    assert exited_alone is not None
    assert exited_alone.crashed
    retired = parse_task(raw_task("complete", "shutdown", 0))
    assert retired is not None
    assert not retired.crashed
    draining = parse_task(raw_task("running", "shutdown"))
    assert draining is not None
    assert not draining.serving


def test_tasks_of_other_services_are_not_ours() -> None:
    raw = raw_task("running")
    raw["Spec"]["ContainerSpec"]["Labels"] = {}
    assert parse_task(raw) is None


def test_service_log_lines_name_their_task() -> None:
    line = (b"com.docker.swarm.node.id=n1,com.docker.swarm.service.id=s1,"
            b"com.docker.swarm.task.id=t123 2026-12-01T10:00:00.000Z [v1.1] hello\n")
    assert split_details(line) == ("t123", b"2026-12-01T10:00:00.000Z [v1.1] hello\n")
    assert split_details(b"no details here\n")[0] == ""


@pytest.mark.parametrize("good", ["node.labels.pool==crews", "node.role!=manager",
                                  "node.hostname==worker-1", "engine.labels.gpu==yes"])
def test_placement_constraints_in_swarms_grammar_are_accepted(good: str) -> None:
    assert check_constraint(good) == good


@pytest.mark.parametrize("bad", ["pool==crews", "node.labels.pool=crews", "node.role==",
                                 "node.labels.a==b; rm -rf /", "node.labels.x==" + "y" * 200])
def test_other_constraints_are_refused_with_the_grammar(bad: str) -> None:
    with pytest.raises(InvalidInputError, match="invalid placement constraint"):
        check_constraint(bad)


def test_swarm_settings_are_checked() -> None:
    settings = from_env({"CREWSHIP_RUNTIME": "swarm", "CREWSHIP_REGISTRY": "reg.internal:5000",
                         "CREWSHIP_SWARM_BIND": "0.0.0.0"})
    assert (settings.runtime, settings.registry, settings.swarm_bind) == (
        "swarm", "reg.internal:5000", "0.0.0.0")
    for var, value in (("CREWSHIP_REGISTRY", "https://reg:5000"), ("CREWSHIP_REGISTRY", "reg"),
                       ("CREWSHIP_SWARM_BIND", "everywhere"), ("CREWSHIP_REGISTRY_PORT", "0")):
        with pytest.raises(InvalidInputError, match=var):
            from_env({var: value})


def test_the_local_registry_listens_where_asked_and_allows_deletes(tmp_path: Path) -> None:
    text = config_text("127.0.0.1:5123", tmp_path)
    assert "addr: 127.0.0.1:5123" in text
    assert f"rootdirectory: {tmp_path}" in text
    assert "delete:\n    enabled: true" in text


def test_the_task_computes_the_port_the_daemon_expects(tmp_path: Path) -> None:
    """``LAUNCH`` run as the task runs it (its env, an argv that prints instead of serving)."""
    import os
    import subprocess
    import sys

    show = tmp_path / "show.py"
    show.write_text("import sys; a = sys.argv; print(a[len(a) - a[::-1].index('--port')])")
    env = {**os.environ, "CREWSHIP_PORT_BASE": "31000", "CREWSHIP_SLOT": "3",
           "CREWSHIP_TASK": "taskid123", "CREWSHIP_BIND": "127.0.0.1", "CREWSHIP_RELEASE": "v3"}
    command = template()["ContainerSpec"]["Command"]
    done = subprocess.run([sys.executable, "-c", command[2], sys.executable, str(show), "--port",
                           "0"], env=env, capture_output=True, text=True, timeout=30, check=True)
    assert int(done.stdout) == task_port(31000, 3, "taskid123")
