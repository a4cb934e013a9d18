"""SSH to the crewship server through paramiko, with the user's keys and agent.

* Keys: those of the running ssh-agent (``$SSH_AUTH_SOCK``), then ``~/.ssh/id_ed25519``,
  ``id_ecdsa`` and ``id_rsa``; a passphrase-protected file is skipped with a note (add
  it to the agent). When the server refuses them all, ``AuthError`` names each one.
* Host keys like OpenSSH's ``StrictHostKeyChecking=accept-new``: a host in
  ``~/.ssh/known_hosts`` or ``~/.config/crewship/known_hosts`` must present a key
  recorded for it; an unknown host's key is recorded on first use in the latter file.
* ``Session.run`` executes one command (the server splits it with ``shlex``), streams
  its stdout and stderr as they arrive, feeds optional stdin, and returns the exit status.
"""

from __future__ import annotations

import logging
import os
import select
import shlex
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import paramiko

from crewship.client.errors import AuthError, HostKeyError, UnreachableError
from crewship.client.remote import ServerAddress

KEY_FILES = ("id_ed25519", "id_ecdsa", "id_rsa")
CONNECT_TIMEOUT = 10.0
CHUNK = 32768

# paramiko logs handshake noise at ERROR through the root "last resort" handler;
# the client reports failures itself, as one clear line.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
logging.getLogger("paramiko").propagate = False


@dataclass(frozen=True)
class Identity:
    """A key the client can offer, and where it came from (for error messages)."""

    label: str
    key: paramiko.PKey

    @property
    def fingerprint(self) -> str:
        return str(self.key.fingerprint)


def config_dir(home: Path, environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME")
    return (Path(base) if base else home / ".config") / "crewship"


def _tilde(path: Path, home: Path) -> str:
    try:
        return "~/" + str(path.relative_to(home))
    except ValueError:
        return str(path)


def load_identities(home: Path, *, use_agent: bool = True) -> tuple[list[Identity], list[str]]:
    """The keys to offer, in order, and notes about keys that could not be used."""
    found: list[Identity] = []
    notes: list[str] = []
    if use_agent and os.environ.get("SSH_AUTH_SOCK"):
        try:
            for key in paramiko.Agent().get_keys():
                found.append(Identity(f"agent key {key.comment or key.get_name()}", key))
        except (paramiko.SSHException, OSError) as exc:
            notes.append(f"ssh-agent not usable ({exc})")
    for name in KEY_FILES:
        path = home / ".ssh" / name
        if not path.is_file():
            continue
        try:
            key = paramiko.PKey.from_path(path)
        except TypeError:
            notes.append(f"{_tilde(path, home)} is passphrase-protected: add it to your agent "
                         f"with 'ssh-add {_tilde(path, home)}'")
            continue
        except (ValueError, OSError, paramiko.SSHException) as exc:
            notes.append(f"{_tilde(path, home)} could not be read ({exc})")
            continue
        found.append(Identity(_tilde(path, home), key))
    unique: dict[str, Identity] = {}
    for identity in found:
        unique.setdefault(identity.fingerprint, identity)
    return list(unique.values()), notes


class KnownHosts:
    """Host-key checking with OpenSSH's ``accept-new`` policy."""

    def __init__(self, home: Path, environ: Mapping[str, str] | None = None) -> None:
        self.user_file = home / ".ssh" / "known_hosts"
        self.own_file = config_dir(home, environ) / "known_hosts"
        self.home = home

    def _load(self) -> paramiko.HostKeys:
        keys = paramiko.HostKeys()
        for path in (self.user_file, self.own_file):
            if path.is_file():
                try:
                    keys.load(str(path))
                except (OSError, paramiko.SSHException):
                    continue
        return keys

    def check(self, address: ServerAddress, key: paramiko.PKey) -> str | None:
        """None if known and matching; a note if newly recorded; ``HostKeyError`` if changed."""
        name = address.known_hosts_name
        known = self._load().lookup(name)
        if known:
            if any(k == key for k in known.values()):
                return None
            raise HostKeyError(
                f"the host key of {address.display} has CHANGED (now {key.get_name()} "
                f"{key.fingerprint}): someone may be intercepting the connection, or the server "
                f"was reinstalled. If you trust it, delete its line for {name} from "
                f"{_tilde(self.own_file, self.home)} (or ~/.ssh/known_hosts) and try again")
        self._record(name, key)
        return (f"Permanently added {name!r} ({key.get_name()}, {key.fingerprint}) to "
                f"{_tilde(self.own_file, self.home)}")

    def _record(self, name: str, key: paramiko.PKey) -> None:
        self.own_file.parent.mkdir(parents=True, exist_ok=True)
        line = f"{name} {key.get_name()} {key.get_base64()}\n"
        with self.own_file.open("a") as f:
            f.write(line)


def _open_transport(address: ServerAddress, timeout: float) -> paramiko.Transport:
    try:
        sock = socket.create_connection((address.host, address.port), timeout=timeout)
    except OSError as exc:
        reason = exc.strerror or str(exc) or type(exc).__name__
        raise UnreachableError(
            f"cannot reach the crewship server at {address.display} ({reason.lower()}): is "
            "'crewship server' running there, and is the address right? (check 'crewship "
            "remote show' or $CREWSHIP_SERVER)") from None
    transport = paramiko.Transport(sock)
    try:
        transport.start_client(timeout=timeout)
    except (paramiko.SSHException, OSError, EOFError) as exc:
        transport.close()
        raise UnreachableError(
            f"{address.display} accepted the connection but the SSH handshake failed ({exc}): "
            "is it a crewship server's SSH port?") from None
    return transport


def _auth_failure(address: ServerAddress, offered: list[Identity], notes: list[str]) -> AuthError:
    note = "".join(f"\n  note: {n}" for n in notes)
    if not offered:
        return AuthError(
            "no SSH key to offer: make one with 'ssh-keygen -t ed25519' (or load one into "
            f"ssh-agent), then have it registered on the server{note}")
    keys = "".join(f"\n  - {i.label} ({i.key.get_name()} {i.fingerprint})" for i in offered)
    return AuthError(
        f"the server at {address.display} refused your SSH key(s):{keys}\n"
        "to register one, an admin runs "
        f"'{address.ssh_hint('keys:add NAME --user YOU')} < YOUR_KEY.pub', or on the server "
        f"'crewship admin add-key YOU YOUR_KEY.pub'{note}")


def connect(address: ServerAddress, *, home: Path | None = None, timeout: float = CONNECT_TIMEOUT,
            notify: Callable[[str], None] | None = None) -> Session:
    """An authenticated session to ``address``; raises a ``ClientError`` subclass."""
    home = home or Path.home()
    identities, notes = load_identities(home)
    transport = _open_transport(address, timeout)
    try:
        note = KnownHosts(home).check(address, transport.get_remote_server_key())
        if note and notify:
            notify(note)
        for identity in identities:
            try:
                transport.auth_publickey(address.user, identity.key)
            except paramiko.AuthenticationException:
                continue
            except (paramiko.SSHException, OSError) as exc:
                notes.append(f"{identity.label}: {exc}")
                continue
            if transport.is_authenticated():
                return Session(address, transport, identity)
        raise _auth_failure(address, identities, notes)
    except BaseException:
        transport.close()
        raise


@dataclass
class Result:
    status: int
    stdout: bytes
    stderr: str


class Session:
    """One authenticated connection; each ``run`` opens a channel for one command."""

    def __init__(self, address: ServerAddress, transport: paramiko.Transport,
                 identity: Identity) -> None:
        self.address = address
        self.transport = transport
        self.identity = identity

    def close(self) -> None:
        self.transport.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def open(self, command: str, env: Mapping[str, str] | None = None) -> paramiko.Channel:
        channel = self.transport.open_session(timeout=CONNECT_TIMEOUT)
        for key, value in (env or {}).items():
            channel.set_environment_variable(key, value)
        channel.exec_command(command)
        return channel

    def run(self, argv: Sequence[str], *, stdin: bytes | None = None,
            out: BinaryIO | None = None, err: BinaryIO | None = None) -> Result:
        """Run ``argv`` on the server; stream to ``out``/``err`` or capture (None)."""
        channel = self.open(shlex.join(argv))
        try:
            if stdin:
                channel.sendall(stdin)
            channel.shutdown_write()
            return pump(channel, out, err)
        finally:
            channel.close()


def pump(channel: paramiko.Channel, out: BinaryIO | None, err: BinaryIO | None) -> Result:
    """Copy the channel's output until the command exits.

    Returns the status, stdout when it was not streamed, and stderr (always kept: it
    carries the server's one-line error).
    """
    stdout, stderr = bytearray(), bytearray()

    def drain() -> None:
        while channel.recv_ready():
            data = channel.recv(CHUNK)
            _emit(out, data, stdout if out is None else None)
        while channel.recv_stderr_ready():
            data = channel.recv_stderr(CHUNK)
            _emit(err, data, stderr)

    while not channel.exit_status_ready():
        select.select([channel], [], [], 0.5)
        drain()
    drain()
    return Result(channel.recv_exit_status(), bytes(stdout), stderr.decode(errors="replace"))


def _emit(sink: BinaryIO | None, data: bytes, copy: bytearray | None) -> None:
    if copy is not None:
        copy.extend(data)
    if sink is not None:
        sink.write(data)
        sink.flush()


def feed_stdin(channel: paramiko.Channel, source: BinaryIO) -> threading.Thread:
    """Copy ``source`` into the channel in a thread, then send EOF (for git)."""
    def copy() -> None:
        try:
            while data := os.read(source.fileno(), CHUNK):
                channel.sendall(data)
            channel.shutdown_write()
        except (OSError, paramiko.SSHException):
            return

    thread = threading.Thread(target=copy, name="stdin", daemon=True)
    thread.start()
    return thread
