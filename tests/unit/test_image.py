"""The docker runtime's pure parts: Dockerfile, build args, the build stream, limits."""

from __future__ import annotations

import pytest

from builder.image import BuildProgress, build_args, dockerfile, secret_values
from crewship.errors import InvalidInputError
from crewship.model import format_memory, parse_cpus, parse_memory
from crewship.reporter import NullReporter
from runtime.container import exit_status


def test_dependency_layer_depends_only_on_the_lock_and_pyproject() -> None:
    text = dockerfile("crewship-base:bookworm", with_ca=True, args={"UV_INDEX_URL"})
    lines = text.splitlines()
    sync = next(i for i, line in enumerate(lines) if "uv sync" in line)
    copies = [line for line in lines[:sync] if line.startswith("COPY")]
    assert copies == ["COPY ca-bundle.crt /etc/crewship/ca-bundle.crt",
                      "COPY uv /usr/local/bin/uv",
                      "COPY deps/pyproject.toml deps/uv.lock /app/"]
    assert "--frozen" in lines[sync]
    assert "--no-install-project" in lines[sync]
    assert "ARG UV_INDEX_URL" in lines[:sync]
    assert "UV_PYTHON_DOWNLOADS=never" in text
    assert text.startswith("FROM crewship-base:bookworm AS deps\n")
    assert lines[-1] == "USER 10001:10001"


def test_the_final_image_copies_the_environment_and_sees_no_build_arg() -> None:
    """Index URLs may carry a password: only the deps stage declares the build args. The
    venv stage (the environment copied out of it) depends on the lock alone, so the code
    comes after it and a code-only build starts from the cached stage."""
    text = dockerfile("crewship-base:bookworm", with_ca=False, deps_key="image-k1",
                      args={"UV_INDEX_URL", "UV_EXTRA_INDEX_URL", "HTTPS_PROXY"})
    _deps, venv, final = (block.splitlines() for block in text.strip().split("\n\n"))
    assert venv[0] == "FROM crewship-base:bookworm AS venv"
    assert venv[-2:] == ["COPY --from=deps /app/.venv /app/.venv",
                         'LABEL crewship.venv="image-k1"']
    assert final[:3] == ["FROM venv", 'LABEL crewship.managed="true"', "COPY app/ /app/"]
    assert not [line for line in venv + final if line.startswith(("ARG", "RUN uv"))]
    assert not [line for line in venv if line.startswith("COPY app/") or "runner" in line]
    assert "ARG HTTPS_PROXY" not in text  # docker's predefined proxy args stay out of history


def test_secret_values_are_the_passwords_in_index_urls() -> None:
    args = {"UV_INDEX_URL": "https://bob:s3cr3t-pw@pypi.corp.example/simple",
            "UV_EXTRA_INDEX_URL": "https://tok3n@extra.example/simple https://open.example/simple",
            "HTTPS_PROXY": "http://p:proxy-pw@127.0.0.1:3128"}
    assert sorted(secret_values(args)) == ["s3cr3t-pw", "tok3n"]
    assert secret_values({"UV_INDEX_URL": "https://pypi.org/simple"}) == []


def test_build_args_keep_reachable_indexes_and_map_pip_settings_for_uv() -> None:
    env = {"PIP_INDEX_URL": "https://mirror.example/simple",
           "PIP_EXTRA_INDEX_URL": "file:///opt/pypi/simple https://extra.example/simple",
           "HTTPS_PROXY": "http://127.0.0.1:3128", "HOME": "/root"}
    args = build_args(env)
    assert args["UV_DEFAULT_INDEX"] == "https://mirror.example/simple"
    assert args["UV_INDEX"] == "https://extra.example/simple"  # file:// is not in the image
    assert args["HTTPS_PROXY"] == "http://127.0.0.1:3128"
    assert "HOME" not in args
    assert build_args({"UV_INDEX_URL": "https://a/simple", "PIP_INDEX_URL": "https://b/simple"}
                      )["UV_INDEX_URL"] == "https://a/simple"


def _feed(progress: BuildProgress, *texts: str) -> None:
    for text in texts:
        progress.feed({"stream": text})


def test_build_stream_reassembles_fragments_and_sees_the_cached_dependency_layer() -> None:
    report = NullReporter()
    progress = BuildProgress(report)
    _feed(progress, "Step 10/17 : RUN uv sync --frozen\n", " ---> Using cache\n",
          "Step 11/17 : COPY app/ /app/\n", " ---> 1a2b\n")
    progress.feed({"aux": {"ID": "sha256:abc"}})
    progress.flush()
    assert progress.deps_cached is True
    assert progress.image_id == "sha256:abc"
    assert any("dependency layer cached" in line for line in report.lines)

    fresh = BuildProgress(NullReporter())
    _feed(fresh, "Step 10/17 : RUN uv sync --frozen\n", " ---> Running in 77\n",
          "\x1b[91mUsing \x1b[0m", "\x1b[91mCPython 3.11.2\x1b[0m", "\x1b[91m interpreter\n\x1b[0m",
          "\x1b[91m + crewai==1.0\n\x1b[0m", "\x1b[91mInstalled 137 packages in 9s\n\x1b[0m")
    assert fresh.deps_cached is False
    assert fresh.python == "3.11.2"
    assert "       Using CPython 3.11.2 interpreter" in fresh.report.lines  # type: ignore[attr-defined]
    assert not any("crewai==" in line for line in fresh.report.lines)  # type: ignore[attr-defined]


def test_a_failing_step_is_named_with_its_output() -> None:
    progress = BuildProgress(NullReporter())
    _feed(progress, "Step 10/17 : RUN uv sync --frozen\n", "error: no matching wheel\n")
    progress.feed({"error": "The command returned a non-zero code: 2",
                   "errorDetail": {"message": "The command returned a non-zero code: 2"}})
    message = str(progress.failure())
    assert "Step 10/17 : RUN uv sync" in message
    assert "non-zero code: 2" in message
    assert "no matching wheel" in message


@pytest.mark.parametrize(("text", "value"), [("512m", 512 * 1024**2), ("1g", 1024**3),
                                             ("1.5G", int(1.5 * 1024**3)), ("none", None)])
def test_memory_limits_parse(text: str, value: int | None) -> None:
    assert parse_memory(text) == value


@pytest.mark.parametrize("text", ["lots", "1k", "-1g", "1t"])
def test_bad_memory_limits_are_refused(text: str) -> None:
    with pytest.raises(InvalidInputError):
        parse_memory(text)


def test_cpu_limits_parse_and_refuse() -> None:
    assert parse_cpus("0.5") == 0.5
    assert parse_cpus("none") is None
    for bad in ("nan", "inf", "two", "0.001", "1000"):
        with pytest.raises(InvalidInputError):
            parse_cpus(bad)
    assert format_memory(768 * 1024**2) == "768m"
    assert format_memory(None) == "unlimited"


def test_signal_deaths_read_like_the_process_backend() -> None:
    assert exit_status(137) == -9
    assert exit_status(143) == -15
    assert exit_status(1) == 1
    assert exit_status(0) == 0
