"""The one way repx talks to a remote machine: the ``ssh`` program, run as a subprocess.

Why ssh itself (not a Python SSH library): it is the user's own ssh, with their keys, their
agent, their ``~/.ssh/config`` (aliases, ProxyJump, certificates) and their known_hosts.
repx stores no password and adds no key. Rules:

* **Host keys are checked.** repx never passes ``StrictHostKeyChecking=no`` or an empty
  known_hosts; an unknown host key is ssh's error, shown as is.
* **No prompt.** ``BatchMode=yes``: a key that needs a passphrase the agent does not hold,
  or a host that asks for a password, fails at once instead of hanging a build.
* **One connection.** ``ControlMaster=auto`` with ``ControlPersist``: the many short
  commands of a build (check, list, send, run) share one authenticated connection, one
  per target (its host and ssh options; see :meth:`SshTarget._connection_key`). The
  control sockets live in a private directory (0700, owned by the user, checked), so no
  other user can ride on the connection.
* **Every remote word quoted.** Remote commands are lists of words joined with
  :func:`shlex.join`: the remote shell sees each as one literal word, so a path with spaces,
  ``$(…)`` or ``;`` is only a path. Nothing here takes shell text.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shlex
import signal
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO

from repx.errors import RepxError

#: ssh's own exit code for "could not connect / authenticate" (a remote command's codes are
#: passed through unchanged).
SSH_FAILED = 255

#: How long a control master outlives its last command (seconds).
CONTROL_PERSIST_SECONDS = 120

#: Environment: a folder for the control sockets instead of the default.
CONTROL_DIR_ENV = "REPX_SSH_CONTROL_DIR"


class RemoteError(RepxError):
    """A remote command failed, or the remote could not be reached."""


def default_control_dir() -> Path:
    """Where the control sockets go: ``$REPX_SSH_CONTROL_DIR``, else
    ``$XDG_RUNTIME_DIR/repx-ssh``, else ``/tmp/repx-ssh-<uid>``. Short on purpose: a unix
    socket's path may not exceed about 100 bytes."""
    configured = os.environ.get(CONTROL_DIR_ENV)
    if configured:
        return Path(configured)
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isdir(runtime):
        return Path(runtime) / "repx-ssh"
    return Path("/tmp") / f"repx-ssh-{os.getuid()}"


def private_dir(path: Path) -> Path:
    """``path`` created 0700 if missing, and checked to be a directory of this user that
    nobody else can enter (a shared /tmp must not let another user plant the socket)."""
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise RepxError(f"{path}: the ssh control folder must be a directory of yours with "
                        f"mode 0700 (it is not); remove it, or set {CONTROL_DIR_ENV}")
    return path


class SshTarget:
    """A remote machine reached with ``ssh HOST``.

    ``host`` is anything ``ssh`` accepts (an alias of ``~/.ssh/config``, ``user@host``);
    ``ssh_options`` are extra words for ssh placed before the host (``-p 2222``, ``-F
    FILE``, ``-i KEY``, ``-o Name=value``). ``name`` only appears in messages.
    """

    def __init__(self, host: str, *, ssh_options: Sequence[str] = (), name: str | None = None,
                 control_dir: Path | None = None, connect_timeout: int = 20,
                 ssh_program: str | None = None) -> None:
        if not host or host.startswith("-"):
            raise RepxError(f"{host!r} is not a host for ssh")
        self.host = host
        self.name = name or host
        self.ssh_options = tuple(ssh_options)
        self.control_dir = control_dir
        self.connect_timeout = connect_timeout
        self.ssh_program = ssh_program or os.environ.get("REPX_SSH", "ssh")

    # ------------------------------------------------------------------ command lines

    def _base(self) -> list[str]:
        control = private_dir(self.control_dir or default_control_dir())
        return [
            self.ssh_program,
            "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={self.connect_timeout}",
            "-o", "ServerAliveInterval=15",
            "-o", "ControlMaster=auto",
            "-o", f"ControlPath={control}/{self._connection_key()}-%C",
            "-o", f"ControlPersist={CONTROL_PERSIST_SECONDS}",
            *self.ssh_options,
        ]

    def _connection_key(self) -> str:
        """What tells this target's connections apart from other targets' to the same
        user@host:port (ssh's %C): its alias and ssh options. Another key or config must
        get a connection of its own, not ride on one that a different key opened."""
        text = "\0".join([self.host, *self.ssh_options])
        return hashlib.sha256(text.encode()).hexdigest()[:10]

    def command(self, argv: Sequence[str], *, tty: bool = False) -> list[str]:
        """The local command line that runs ``argv`` on the remote (each word quoted)."""
        if not argv:
            raise RepxError("no remote command given")
        words = [str(word) for word in argv]
        if any("\0" in word for word in words):
            raise RepxError("a remote argument contains a NUL byte")
        return [*self._base(), *(["-tt"] if tty else ["-T"]), "--", self.host,
                shlex.join(words)]

    # ------------------------------------------------------------------ running

    def run(self, argv: Sequence[str], *, input: bytes | None = None, check: bool = True,
            timeout: float | None = None) -> subprocess.CompletedProcess[bytes]:
        """Run ``argv`` remotely; stdout and stderr captured. With ``check`` a failure is a
        :class:`RemoteError` carrying the remote's stderr."""
        try:
            result = subprocess.run(self.command(argv), input=input, capture_output=True,
                                    timeout=timeout, check=False,
                                    stdin=None if input is not None else subprocess.DEVNULL)
        except FileNotFoundError:
            raise RemoteError(f"{self.ssh_program}: not found (repx reaches targets with "
                              "OpenSSH's ssh client)") from None
        except subprocess.TimeoutExpired:
            raise RemoteError(f"{self.name}: `{shlex.join(argv)}` took over {timeout:.0f} s"
                              ) from None
        if check and result.returncode != 0:
            raise self.error(argv, result.returncode, result.stderr)
        return result

    def error(self, argv: Sequence[str], code: int, stderr: bytes | str) -> RemoteError:
        """The error for a remote command that ended with ``code``."""
        text = stderr.decode(errors="replace") if isinstance(stderr, bytes) else stderr
        text = text.strip()
        if code == SSH_FAILED:
            return RemoteError(f"cannot reach {self.name} with ssh ({self.host}): "
                               f"{text or 'ssh exited with 255'}")
        launched = any(str(word).endswith("/launch.py") for word in argv)
        head = "the remote repx" if launched else (argv[0] if argv else "?")
        return RemoteError(f"{self.name}: {head} failed (exit {code})"
                           + (f": {text}" if text else ""))

    def popen(self, argv: Sequence[str], *, stdin: int | IO[bytes] | None = None,
              stdout: int | IO[bytes] | None = None, stderr: int | IO[bytes] | None = None,
              tty: bool = False, new_session: bool = False) -> subprocess.Popen[bytes]:
        """Start ``argv`` remotely; the caller owns the pipes."""
        try:
            return subprocess.Popen(self.command(argv, tty=tty), stdin=stdin, stdout=stdout,
                                    stderr=stderr, start_new_session=new_session)
        except FileNotFoundError:
            raise RemoteError(f"{self.ssh_program}: not found (repx reaches targets with "
                              "OpenSSH's ssh client)") from None

    def stream(self, argv: Sequence[str], *, on_interrupt: Callable[[], None] | None = None
               ) -> int:
        """Run ``argv`` remotely with its output going straight to ours; its exit code.

        The remote command's stdin is a pipe held open here: Ctrl-C closes it (and calls
        ``on_interrupt``), which a remote repx started with ``--hangup-on-eof`` treats as its
        own Ctrl-C (it cancels its jobs, records them, and ends). A second Ctrl-C ends ssh.
        ssh runs in a session of its own, so the terminal's Ctrl-C reaches only repx here,
        which decides what the remote gets.
        """
        process = self.popen(argv, stdin=subprocess.PIPE, new_session=True)
        interrupted = False
        while True:
            try:
                return process.wait()
            except KeyboardInterrupt:
                if interrupted:
                    process.send_signal(signal.SIGTERM)
                    process.wait()
                    raise
                interrupted = True
                if on_interrupt is not None:
                    on_interrupt()
                if process.stdin is not None:
                    with contextlib.suppress(OSError):
                        process.stdin.close()

    def send_tar(self, argv: Sequence[str], write: Callable[[IO[bytes]], None]) -> int:
        """Run ``argv`` remotely with ``write`` filling its stdin (a tar, usually); the
        number of bytes sent. The remote's stderr is in the error when it fails."""
        process = self.popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        assert process.stdin is not None and process.stdout is not None
        errors: list[bytes] = []
        output: list[bytes] = []
        readers = [threading.Thread(target=lambda: errors.append(process.stderr.read()),
                                    daemon=True),  # type: ignore[union-attr]
                   threading.Thread(target=lambda: output.append(process.stdout.read()),
                                    daemon=True)]  # type: ignore[union-attr]
        for reader in readers:
            reader.start()
        counter = _CountingWriter(process.stdin)
        broken = False
        try:
            write(counter)
        except BrokenPipeError:
            broken = True  # the remote ended early: its exit code and stderr say why
        finally:
            with contextlib.suppress(OSError):
                process.stdin.close()
            if sys.exc_info()[0] is not None and not broken:
                process.kill()
        code = process.wait()
        for reader in readers:
            reader.join()
        self.last_output = b"".join(output)
        if code != 0 or broken:
            raise self.error(argv, code or SSH_FAILED, b"".join(errors))
        return counter.size

    def receive(self, argv: Sequence[str], read: Callable[[IO[bytes]], None], *,
                input: bytes | None = None) -> None:
        """Run ``argv`` remotely with ``read`` consuming its stdout (a tar, usually);
        ``input``, when given, is its whole stdin (a request it reads before answering)."""
        process = self.popen(argv, stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        assert process.stdout is not None and process.stderr is not None
        errors: list[bytes] = []
        reader = threading.Thread(target=lambda: errors.append(process.stderr.read()),
                                  daemon=True)  # type: ignore[union-attr]
        reader.start()
        try:
            if input is not None:
                assert process.stdin is not None
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.write(input)
                    process.stdin.close()
            read(process.stdout)
            # Whatever ``read`` left unread is drained so that the remote can exit.
            while process.stdout.read(1 << 16):
                pass
        except BaseException:
            process.kill()
            raise
        finally:
            code = process.wait()
            reader.join()
        if code != 0:
            raise self.error(argv, code, b"".join(errors))

    def close(self) -> None:
        """End the control master (the next command opens a new connection)."""
        with contextlib.suppress(OSError, RepxError):
            subprocess.run([*self._base(), "-O", "exit", "--", self.host],
                           capture_output=True, timeout=10, check=False)

    @contextlib.contextmanager
    def session(self) -> Iterator[SshTarget]:
        """This target, its control master ended on exit."""
        try:
            yield self
        finally:
            self.close()


class _CountingWriter:
    """A write-only stream that counts what it passes on (bytes shipped, for the summary)."""

    def __init__(self, target: IO[bytes]) -> None:
        self.target = target
        self.size = 0

    def write(self, data: bytes) -> int:
        self.size += len(data)
        self.target.write(data)
        return len(data)

    def flush(self) -> None:
        self.target.flush()
