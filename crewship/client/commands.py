"""``crewship deploy create|push|status|logs|list|remove|validate``: the commands and
flags of ``crewai deploy`` (reference/crewai-protocol.md A.2-A.8), over SSH.

Each handler takes the ``Client`` and the parsed arguments and returns the exit status;
errors are raised (``ClientError`` and friends) and printed by the entry point.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path

from crewship.client import project as projects
from crewship.client import remote
from crewship.client.context import Client
from crewship.client.errors import ChecksFailedError, ClientError
from crewship.model import validate_app_name

UP_TO_DATE = "Everything up-to-date"
GITSSH = "crewship.client.gitssh"
EXCLUDES = (".env", ".env.*", "!.env.example", ".venv/", "__pycache__/", "*.pyc", ".crewship/")


def run_checks(client: Client, root: Path, *, show_all: bool = False) -> None:
    """The local pre-deploy checks; ``ChecksFailedError`` when any is an error."""
    from builder.validate import validate

    result = validate(root)
    shown = result.findings if show_all else (*result.errors, *result.warnings)
    emit = client.console.out if show_all else client.console.note
    for line in projects.format_findings(shown):
        emit(line)
    if result.errors:
        raise ChecksFailedError(
            f"validation failed with {len(result.errors)} error(s) (code, message and fix "
            "above): fix them and try again ('crewship deploy validate' re-runs the checks)")


def deploy_validate(client: Client, args: argparse.Namespace) -> int:
    from builder.validate import validate

    project = client.project()
    result = validate(project.root)
    for line in projects.format_findings(result.findings):
        client.console.out(line)
    if result.errors:
        client.console.error(f"{len(result.errors)} error(s), {len(result.warnings)} "
                             "warning(s): the deploy would be refused")
        return 1
    client.console.out(f"{project.name}: ready to deploy ({len(result.warnings)} warning(s))")
    return 0


def ensure_repo(client: Client, root: Path) -> None:
    """A git repository with a first commit, made like the crewai CLI does if missing."""
    if not remote.is_git_repo(root):
        remote.git(["init", "-q", "-b", "main"], root)
    elif remote.git(["rev-parse", "--verify", "-q", "HEAD"], root, check=False).returncode == 0:
        return
    exclude = root / ".git" / "info" / "exclude"
    exclude.parent.mkdir(parents=True, exist_ok=True)
    with exclude.open("a") as f:
        f.write("\n".join(EXCLUDES) + "\n")
    remote.git(["add", "-A"], root)
    remote.git(["-c", "user.name=crewship", "-c", "user.email=deploy@crewship.local",
                "commit", "-q", "-m", "Initial crew"], root)
    client.console.note("made the first commit of the project's git repository (.env excluded)")


def deploy_create(client: Client, args: argparse.Namespace) -> int:
    project = client.project()
    app = validate_app_name(args.name) if args.name else project.app
    if not args.skip_validate:
        run_checks(client, project.root)
    env = projects.read_dotenv(project.root)
    server = client.server
    console = client.console
    console.note(f"Creating app {app} on {server.display}")
    if env:
        console.note(f"{len(env)} config var(s) from .env will be stored: {', '.join(env)}")
    else:
        console.note("no .env values: no config vars will be stored")
    if not console.confirm("Continue?", assume_yes=args.yes):
        console.note("nothing was created")
        return 1
    ensure_repo(client, project.root)
    created = client.remote_json(["apps:create", app])
    git_url = str(created.get("git_url") or server.git_url(app))
    console.note(remote.set_remote(project.root, git_url))
    if env:
        client.remote(["config:set", app, *(f"{k}={v}" for k, v in env.items()), "--no-restart"])
    console.out("Deployment created successfully!")
    console.out(f"Name: {created['name']} ({created['uuid']})")
    console.out(f"URL: {created.get('url', '-')}")
    console.out("To deploy the crew, run: crewship deploy push")
    return 0


def _git_push_env() -> dict[str, str]:
    env = dict(os.environ)
    env["GIT_SSH_COMMAND"] = shlex.join([sys.executable, "-m", GITSSH])
    env["GIT_SSH_VARIANT"] = "ssh"
    env["GIT_TERMINAL_PROMPT"] = "0"
    return env


def git_push(client: Client, root: Path, target: str, *, force: bool) -> tuple[int, str]:
    """``git push TARGET HEAD:main``, stderr streamed and kept; (status, stderr)."""
    argv = ["git", "push", *(["--force"] if force else []), target, "HEAD:main"]
    err = client.console.binary_err
    proc = subprocess.Popen(argv, cwd=root, env=_git_push_env(), stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    assert proc.stderr is not None
    said = bytearray()
    try:
        while chunk := os.read(proc.stderr.fileno(), 8192):
            said.extend(chunk)
            if err is not None:
                err.write(chunk)
                err.flush()
    finally:
        status = proc.wait()
    return status, said.decode(errors="replace")


def push_failure(app: str, said: str) -> ClientError:
    """What a failed ``git push`` means, and what to do about it."""
    if "crewship: " in said:
        return ClientError("the push did not reach the server (see the message above)")
    if "src refspec" in said or "does not match any" in said:
        return ClientError("nothing to push: commit your project first "
                           "(git add -A && git commit -m 'my crew')")
    if "[rejected]" in said or "non-fast-forward" in said:
        return ClientError("the server has commits your branch does not: 'crewship deploy "
                           "push --force' replaces them with yours")
    return ClientError(
        f"the deploy of {app} failed and the previous release (if any) keeps serving: see "
        f"the build output above, and 'crewship deploy logs' for the app's log")


def deploy_push(client: Client, args: argparse.Namespace) -> int:
    project = client.project()
    app = client.app_name(args.uuid)
    if not args.skip_validate:
        run_checks(client, project.root)
    target = remote.remote_url(project.root)
    if args.uuid or target is None:
        target = client.server.git_url(app)
        if remote.remote_url(project.root) is None:
            client.console.note(remote.set_remote(project.root, target))
    dirty = remote.git(["status", "--porcelain"], project.root, check=False).stdout.strip()
    if dirty:
        client.console.note("note: uncommitted changes are not deployed (commit them first)")
    status, said = git_push(client, project.root, target, force=args.force)
    if status != 0:
        raise push_failure(app, said)
    if args.force and UP_TO_DATE in said:
        client.console.note(f"{app} already has this commit: redeploying it (restart)")
        client.remote(["restart", app])
    return 0


def deploy_status(client: Client, args: argparse.Namespace) -> int:
    app = client.app_name(args.uuid)
    client.remote(["status", app, *(["--json"] if args.json else [])])
    return 0


def deploy_logs(client: Client, args: argparse.Namespace) -> int:
    app = client.app_name(args.uuid)
    argv = ["logs", app, "-n", str(args.num), *(["-t"] if args.follow else [])]
    try:
        client.remote(argv)
    except KeyboardInterrupt:
        return 0
    return 0


def deploy_list(client: Client, args: argparse.Namespace) -> int:
    client.remote(["apps", *(["--json"] if args.json else [])])
    return 0


def deploy_remove(client: Client, args: argparse.Namespace) -> int:
    app = client.app_name(args.uuid)
    console = client.console
    question = (f"Remove {app} from {client.server.display}? Its repo, releases, config and "
                "logs are deleted for good.")
    if not console.confirm(question, assume_yes=args.yes):
        console.note("nothing was removed")
        return 1
    client.remote(["apps:destroy", app, "--force"])
    root = client.cwd
    url = remote.remote_url(root)
    if url and url.rstrip("/").endswith(f"/{app}.git"):
        remote.git(["remote", "remove", remote.REMOTE_NAME], root)
        console.note(f"removed git remote {remote.REMOTE_NAME}")
    console.out(f"Crew '{app}' removed successfully.")
    return 0
