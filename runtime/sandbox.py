"""The process runtime's sandbox: every instance runs under bubblewrap (DESIGN.md section 5).

What an instance sees:

- the host's ``/usr`` and ``/etc`` (and the ``/bin``, ``/lib``... links), read-only, and
  the prefix of its interpreter when that lives elsewhere (pyenv, ``/opt``), read-only;
- its release tree and its dependency environment (``envs/<key>``), read-only, at their
  own paths, so the runner's argv needs no rewriting;
- its app's HOME, writable, and a ``/tmp`` and ``/dev/shm`` of its own (tmpfs);
- nothing else of the data dir: ``state.db``, host keys, repos, other apps' releases,
  homes and logs are simply not mounted. Its log is the stdout/stderr descriptor the
  daemon opened (mode 0600), so it cannot read another app's log either;
- its own PID and IPC namespaces, a new session, no new privileges, no capabilities;
  the host's network (the crew calls its LLM).

When the daemon is root, bubblewrap runs privileged and ``setpriv`` drops the crew to its
app's own uid/gid (allocated per app, recorded in SQLite) with every capability gone, so
one crew can neither signal, ptrace nor read another. Otherwise bubblewrap makes a user
namespace and the crew runs as the daemon's user, still behind its own mount and PID
namespaces.

The process tree is ``bwrap`` (the pid the backend records) -> ``bwrap`` as the init of
the new PID namespace -> the crew. bubblewrap forwards no signals: a graceful stop goes to
the crew itself, and SIGKILL to the namespace's init ends every process inside it.
There is no ``--die-with-parent``: instances outlive the daemon and are adopted.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from crewship.errors import CrewshipError
from crewship.log import get as get_logger
from runtime.backend import InstanceSpec

BWRAP = "/usr/bin/bwrap"
SETPRIV = "/usr/bin/setpriv"
# Used when the daemon is root and a spec carries no uid of its own (tests, tools).
NOBODY = 65534
_SYSTEM_DIRS = ("usr", "etc")
_SYSTEM_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# Certificates the crew may be pointed at (PASSTHROUGH in crewship/service/specs.py).
_CERT_VARS = ("SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")
# The sandbox's own tmpfs mounts (inside its mount namespace, not the host's /tmp).
_TMP, _SHM = "/tmp", "/dev/shm"  # noqa: S108
log = get_logger(__name__)


class SandboxUnavailableError(CrewshipError):
    """bubblewrap cannot run here; the message says why and what to do."""


@dataclass(frozen=True)
class Launch:
    """How to spawn one sandboxed instance: the full argv (bwrap ... -- crew argv) and
    the descriptors the child keeps; ``info_fd`` is where bwrap reports its init's pid."""

    argv: list[str]
    pass_fds: tuple[int, ...] = ()
    info_fd: int | None = None


def _under(path: Path, roots: tuple[Path, ...]) -> bool:
    return any(path == root or root in path.parents for root in roots)


class Sandbox:
    """Builds the bubblewrap argv for an instance; see the module docstring."""

    def __init__(self, bwrap: str = BWRAP, setpriv: str = SETPRIV) -> None:
        self.bwrap = bwrap
        self.setpriv = setpriv
        self.as_root = os.geteuid() == 0

    # -- can it run here? ----------------------------------------------------

    def check(self, timeout: float = 20.0) -> None:
        """Start a trivial sandbox once; raise ``SandboxUnavailableError`` if it fails."""
        fix = ("install bubblewrap ('apt-get install bubblewrap') and allow user namespaces "
               "('sysctl kernel.unprivileged_userns_clone=1'), or start the server with "
               "--insecure-no-sandbox to run crews unsandboxed (unsafe)")
        missing = [p for p in (self.bwrap, self.setpriv if self.as_root else None)
                   if p and not os.access(p, os.X_OK)]
        if missing:
            raise SandboxUnavailableError(f"cannot sandbox crews: {missing[0]} not found; {fix}")
        argv = self.trivial_argv()
        try:
            done = subprocess.run(argv, capture_output=True, timeout=timeout, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise SandboxUnavailableError(f"cannot sandbox crews: {exc}; {fix}") from exc
        if done.returncode != 0:
            reason = done.stderr.decode(errors="replace").strip().splitlines()
            raise SandboxUnavailableError(
                f"cannot sandbox crews: bubblewrap failed ({reason[-1] if reason else done.returncode}); "
                f"{fix}")

    def trivial_argv(self, uid: int = NOBODY) -> list[str]:
        """``/bin/true`` in an empty sandbox (the check; the bench's setup cost)."""
        return [*self._base(), "--", *self._drop(uid), "/bin/true"]

    # -- one instance --------------------------------------------------------

    def prepare(self, spec: InstanceSpec) -> None:
        """The app's HOME exists and, when we are root, belongs to the app's uid only."""
        if spec.home is None:
            return
        spec.home.mkdir(parents=True, exist_ok=True)
        if not self.as_root:
            return
        uid = self.uid_of(spec)
        st = spec.home.stat()
        if (st.st_uid, st.st_gid) != (uid, uid):
            for root, dirs, files in os.walk(spec.home):
                for name in (*dirs, *files):
                    os.lchown(os.path.join(root, name), uid, uid)
            os.chown(spec.home, uid, uid)
            log.info("home_chowned", app=spec.app, uid=uid)
        spec.home.chmod(0o700)

    def uid_of(self, spec: InstanceSpec) -> int:
        return spec.uid if spec.uid is not None else NOBODY

    def launch(self, spec: InstanceSpec, info_fd: int) -> Launch:
        """The argv that runs ``spec.argv`` in the sandbox (bwrap, mounts, setpriv).

        bwrap writes ``{"child-pid": N}`` (N: the namespace's init) to ``info_fd``.
        """
        argv = [*self._base(), *self._mounts(spec), "--chdir", str(spec.cwd),
                "--info-fd", str(info_fd)]
        for var, value in self.setenv(spec).items():
            argv += ["--setenv", var, value]
        argv += ["--", *self._drop(self.uid_of(spec)), *spec.argv]
        return Launch(argv, pass_fds=(info_fd,), info_fd=info_fd)

    def setenv(self, spec: InstanceSpec) -> dict[str, str]:
        """What the sandbox adds to the instance's environment."""
        if not self.as_root:
            return {}
        # the app's uid has no passwd entry: getpass.getuser() reads these
        return {var: f"crew-{spec.app}" for var in ("USER", "LOGNAME") if var not in spec.env}

    def _base(self) -> list[str]:
        argv = [self.bwrap]
        for name in _SYSTEM_DIRS:
            argv += ["--ro-bind", f"/{name}", f"/{name}"]
        for name in _SYSTEM_LINKS:
            path = Path("/") / name
            if path.is_symlink():
                argv += ["--symlink", os.readlink(path), str(path)]
            elif path.is_dir():
                argv += ["--ro-bind", str(path), str(path)]
        argv += ["--proc", "/proc", "--dev", "/dev",
                 "--perms", "1777", "--tmpfs", _TMP, "--perms", "1777", "--tmpfs", _SHM,
                 "--unshare-pid", "--unshare-ipc", "--new-session"]
        # What setpriv needs to drop to the app's uid, and nothing else; only bwrap's own
        # init keeps them (root, which a crew under its uid can neither signal nor ptrace).
        if self.as_root:
            argv += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID",
                     "--cap-add", "CAP_SETPCAP"]
        return argv

    def _drop(self, uid: int) -> list[str]:
        if not self.as_root:
            return []
        return [self.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
                "--inh-caps=-all", "--bounding-set=-all", "--no-new-privs", "--"]

    def _mounts(self, spec: InstanceSpec) -> list[str]:
        system = tuple(Path("/") / n for n in (*_SYSTEM_DIRS, *_SYSTEM_LINKS))
        readonly = [*spec.readonly, *_interpreter_prefix(spec.argv[0], system),
                    *_cert_paths(spec.env, system)]
        binds = [("--ro-bind", p) for p in readonly]
        if spec.home is not None:
            binds.append(("--bind", spec.home))
        binds += [("--bind", p) for p in spec.writable]
        # Directories bwrap would make on the way are 0700 root: make them traversable
        # (0711: a crew under its own uid cannot even list the mount points).
        made = {Path("/"), Path(_TMP)}
        argv: list[str] = []
        for flag, path in binds:
            for parent in reversed(path.parents):
                if parent not in made and not _under(parent, system):
                    made.add(parent)
                    argv += ["--perms", "0711", "--dir", str(parent)]
            argv += [flag, str(path), str(path)]
        return argv


def _interpreter_prefix(argv0: str, system: tuple[Path, ...]) -> list[Path]:
    """The installation the crew's python resolves to, when outside the system dirs."""
    real = Path(argv0).resolve()
    if not real.is_file() or _under(real, system):
        return []
    return [real.parent.parent]


def _cert_paths(env: dict[str, str], system: tuple[Path, ...]) -> list[Path]:
    found = []
    for var in _CERT_VARS:
        value = env.get(var)
        if value and os.path.isabs(value) and Path(value).exists():
            path = Path(value).resolve()
            if not _under(path, system) and path not in found:
                found.append(path)
    return found


def read_init_pid(fd: int, timeout: float = 10.0) -> int | None:
    """The init pid bwrap reports on its ``--info-fd`` (None: it failed before)."""
    data = b""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        chunk = os.read(fd, 4096) if ready else b""
        if not chunk:
            break
        data += chunk
    try:
        return int(json.loads(data)["child-pid"])
    except (ValueError, KeyError, TypeError):
        return None


def first_child(pid: int) -> int | None:
    """The oldest child of ``pid`` (the crew, for a sandbox's init)."""
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return None
    return int(text[0]) if text else None
