"""The pure parts of usage sampling, limits and quotas (issue 19)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from crewship.api.charts import usage_chart
from crewship.errors import InvalidInputError
from crewship.service.audit import printable
from crewship.service.quotas import parse_quota
from crewship.store.quotas import UNLIMITED
from runtime.backend import InstanceRef
from runtime.usage import Cgroups, ProcessSampler, docker_usage, process_tree, scan_proc

REF = InstanceRef(id="demo-v1.1-abc", app="demo", release=1, index=1, host="127.0.0.1",
                  port=1, pid=os.getpid(), started_at=time.time() - 5)


def test_docker_usage_follows_docker_stats_arithmetic() -> None:
    stats = {"memory_stats": {"usage": 300 * 2**20, "stats": {"inactive_file": 20 * 2**20}},
             "cpu_stats": {"cpu_usage": {"total_usage": 3_000_000_000},
                           "system_cpu_usage": 20_000_000_000, "online_cpus": 2},
             "precpu_stats": {"cpu_usage": {"total_usage": 2_000_000_000},
                              "system_cpu_usage": 10_000_000_000},
             "pids_stats": {"current": 7}}
    usage = docker_usage(stats, REF)
    assert usage is not None
    assert usage.memory_bytes == 280 * 2**20
    assert usage.cpu_percent == pytest.approx(20.0)   # 1e9 of 1e10 ns, 2 cores
    assert (usage.threads, usage.fds) == (7, None)
    assert usage.uptime_seconds >= 4   # REF started 5 s before this module was imported
    # one_shot answers carry no precpu_stats: the sampler's previous answer stands in
    later = docker_usage({**stats, "precpu_stats": {}}, REF, (2_500_000_000, 15_000_000_000))
    assert later is not None
    assert later.cpu_percent == pytest.approx(20.0)  # 0.5e9 of 5e9 ns, 2 cores
    assert docker_usage({"memory_stats": {}}, REF) is None   # a container that stopped


def test_the_process_sampler_sums_a_real_process_tree() -> None:
    table = scan_proc()
    assert os.getpid() in process_tree(os.getppid(), table)
    assert process_tree(-1, table) == []
    sampler = ProcessSampler()
    first = sampler.sample([REF])[REF.id]
    sum(i * i for i in range(300_000))  # some CPU between the samples
    time.sleep(0.05)
    second = sampler.sample([REF])[REF.id]
    assert first.memory_bytes > 10 * 2**20
    assert first.threads >= 1
    assert first.fds is not None
    assert first.fds >= 3
    assert first.cpu_percent == 0.0          # nothing to compare with yet
    assert second.cpu_percent > 0


def test_cgroups_need_cgroup2_with_memory_and_cpu_and_read_oom_kills(tmp_path: Path) -> None:
    assert not Cgroups(tmp_path).available()
    (tmp_path / "cgroup.controllers").write_text("cpuset io pids\n")
    assert not Cgroups(tmp_path).available()
    (tmp_path / "cgroup.controllers").write_text("cpuset cpu io memory pids\n")
    groups = Cgroups(tmp_path)
    assert groups.available()
    group = tmp_path / "crewship" / "demo" / "demo-v1.1-abc"
    group.mkdir(parents=True)
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 4\noom 1\noom_kill 0\n")
    assert not groups.oom_killed("demo", "demo-v1.1-abc")
    (group / "memory.events").write_text("low 0\nhigh 0\nmax 9\noom 2\noom_kill 1\n")
    assert groups.oom_killed("demo", "demo-v1.1-abc")
    assert not groups.oom_killed("demo", "unknown")


def test_quota_assignments() -> None:
    assert parse_quota(["apps=3", "instances=4", "memory=2g"]) == {
        "apps": 3, "instances": 4, "memory": 2 * 2**30}
    assert parse_quota(["apps=none", "memory=default"]) == {"apps": UNLIMITED, "memory": None}
    for bad in ([], ["apps"], ["cpus=2"], ["apps=-1"], ["apps=3.5"], ["memory=lots"],
                ["instances=99999"]):
        with pytest.raises(InvalidInputError):
            parse_quota(bad)


def test_the_usage_chart_draws_memory_and_cpu_over_the_points_span() -> None:
    now = 1_000_000.0
    points = [{"at": now - 120 + i * 60, "memory_bytes": (200 + i) * 2**20,
               "cpu_percent": 10.0 * i} for i in range(3)]
    chart = usage_chart(points, now)
    assert len(chart["area"].split()) == 5          # the three points, closed to the axis
    assert len(chart["cpu"].split()) == 3
    assert chart["xlabels"][0]["text"] == "10 min ago"   # under 10 minutes: a 10-minute span
    older = [{"at": now - 20 * 3600, "memory_bytes": 1, "cpu_percent": 1}, *points]
    assert usage_chart(older, now)["xlabels"][0]["text"] == "20 h ago"
    too_old = [{"at": now - 30 * 3600, "memory_bytes": 1, "cpu_percent": 1}, *points]
    assert usage_chart(too_old, now) == chart       # only the last 24 h are drawn
    single = usage_chart(points[:1], now)
    assert single["dot"] is not None
    assert single["area"] == ""


def test_audit_summaries_stay_on_one_line() -> None:
    assert printable("created bad\nname\x1b[31m") == "created bad?name?[31m"
    assert printable(None) is None


def test_cgroup_groups_get_the_limits_in_cgroup_v2_syntax(tmp_path: Path) -> None:
    """The files a cgroup v2 hierarchy would get (a plain directory stands in for it here:
    this machine's hierarchy is cgroup v1; ProcessBackend writes the same files)."""
    groups = Cgroups(tmp_path)
    group = groups.apply("demo", "demo-v1.1-abc", 4242, 512 * 2**20, 0.5)
    assert group == tmp_path / "crewship" / "demo" / "demo-v1.1-abc"
    assert (group / "memory.max").read_text() == str(512 * 2**20)
    assert (group / "memory.swap.max").read_text() == "0"
    assert (group / "cpu.max").read_text() == "50000 100000"
    assert (group / "cgroup.procs").read_text() == "4242"
    for parent in (tmp_path, tmp_path / "crewship", tmp_path / "crewship" / "demo"):
        assert (parent / "cgroup.subtree_control").read_text() == "+memory +cpu"
    unlimited_cpu = groups.apply("demo", "demo-v1.2-def", 4243, 256 * 2**20, None)
    assert not (unlimited_cpu / "cpu.max").exists()
