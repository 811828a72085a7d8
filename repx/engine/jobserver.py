"""A client of GNU make's jobserver, so that ``repx build`` in a make recipe shares make's
``-j`` slots with the Makefile's other rules.

GNU make ``-jN`` hands its recipes N-1 tokens (one byte each) in a pipe or a named fifo and
tells them where in ``MAKEFLAGS``: ``--jobserver-auth=R,W`` (two inherited file descriptors,
make up to 4.3) or ``--jobserver-auth=fifo:PATH`` (make 4.4). A client always has one
implicit slot, the one make gave its recipe; every further job it runs at once needs a token
read from the jobserver first, and the very byte read goes back when that job ends. Tokens
are never kept past the job they were taken for: whatever ends a build (success, failure,
Ctrl-C, an exception) gives every token back in :meth:`Jobserver.close`, or the Makefile's
other rules would lose those slots for the rest of make's run.

Reads never block the scheduler: the read end is opened anew (``/proc/self/fd/R`` for the
pipe form) with ``O_NONBLOCK`` on a description of its own, so make's own blocking mode of the
shared pipe is left alone, and the scheduler's epoll loop waits on :attr:`Jobserver.read_fd`
while units are ready and no token is at hand.

make passes the descriptors only to recipes it knows are recursive (a ``+`` prefix or
``$(MAKE)`` in the line); others see ``--jobserver-auth`` with descriptors that are closed or
reused. Like a sub-make, repx then says so and runs one job at a time: taking more would
exceed what ``make -j`` allows.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from dataclasses import dataclass, field

from repx.errors import UsageError

#: The environment variable make describes its jobserver in (and which a sub-make reads).
MAKEFLAGS_ENV = "MAKEFLAGS"

_AUTH = re.compile(r"--jobserver-(?:auth|fds)=(\S+)")
_JOBS = re.compile(r"(?:^|\s)-j(\d+)(?=\s|$)")


@dataclass
class Jobserver:
    """Tokens taken from make's jobserver; see the module docstring.

    ``read_fd`` is non-blocking and ours alone (close it with :meth:`close`); ``write_fd``
    is make's inherited descriptor (pipe form, not closed here) or one we opened (fifo form).
    """

    read_fd: int
    write_fd: int
    #: Where the jobserver is (for messages): "pipe R,W" or the fifo's path.
    where: str
    #: make's ``-j`` when MAKEFLAGS says it (the total slots shared), else 0.
    make_jobs: int = 0
    #: Whether :attr:`write_fd` is ours to close.
    owns_write_fd: bool = False
    #: The bytes taken and not yet given back (make 4.4 reads meaning into them).
    held: list[bytes] = field(default_factory=list)

    def try_acquire(self) -> bool:
        """Take one token if one is free right now; never waits."""
        try:
            token = os.read(self.read_fd, 1)
        except (BlockingIOError, InterruptedError):
            return False
        if not token:  # every writer closed: make is gone, no slot will come back
            return False
        self.held.append(token)
        return True

    def release(self, count: int = 1) -> None:
        """Give ``count`` tokens back (the bytes taken, most recent first)."""
        for _ in range(min(count, len(self.held))):
            token = self.held.pop()
            while True:
                try:
                    os.write(self.write_fd, token)
                    break
                except InterruptedError:
                    continue
                except OSError:  # make is gone: nobody left to give it to
                    break

    def close(self) -> None:
        """Give every token back and close what was opened here."""
        self.release(len(self.held))
        with contextlib.suppress(OSError):
            os.close(self.read_fd)
        if self.owns_write_fd:
            with contextlib.suppress(OSError):
                os.close(self.write_fd)

    @property
    def tokens(self) -> int:
        """Tokens held now (one per job running beyond the implicit slot)."""
        return len(self.held)


@dataclass
class JobserverUnavailable:
    """make advertises a jobserver this process cannot use: run one job at a time."""

    reason: str


def jobserver_from_env(environ: dict[str, str] | None = None
                       ) -> Jobserver | JobserverUnavailable | None:
    """make's jobserver as ``MAKEFLAGS`` describes it: a :class:`Jobserver`, a
    :class:`JobserverUnavailable` when its descriptors or fifo cannot be used, None when
    there is none (no make above us, or make without ``-j``)."""
    flags = (os.environ if environ is None else environ).get(MAKEFLAGS_ENV, "")
    auths = _AUTH.findall(flags)
    if not auths:
        return None
    auth = auths[-1]  # make appends; a sub-make's own setting comes last
    jobs_match = _JOBS.findall(flags)
    make_jobs = int(jobs_match[-1]) if jobs_match else 0
    if auth.startswith("fifo:"):
        return _open_fifo(auth[len("fifo:"):], make_jobs)
    return _open_pipe(auth, make_jobs)


def _open_pipe(auth: str, make_jobs: int) -> Jobserver | JobserverUnavailable:
    parts = auth.split(",")
    if len(parts) != 2 or not all(p.strip().lstrip("-").isdigit() for p in parts):
        raise UsageError(f"{MAKEFLAGS_ENV} has --jobserver-auth={auth}, which is neither "
                         "R,W (two file descriptors) nor fifo:PATH")
    read_fd, write_fd = (int(p) for p in parts)
    advice = ("make did not pass its jobserver to this recipe; prefix the recipe line with "
              "'+' (or run it from a rule that uses $(MAKE)) so repx can share make's job "
              "slots")
    if read_fd < 0 or write_fd < 0:
        return JobserverUnavailable(advice)
    try:
        read_stat, write_stat = os.fstat(read_fd), os.fstat(write_fd)
    except OSError:
        return JobserverUnavailable(advice)
    # Closed descriptors get reused by whatever the shell opens next: both must still be the
    # two ends of one pipe, or they are not make's.
    if not (stat.S_ISFIFO(read_stat.st_mode) and stat.S_ISFIFO(write_stat.st_mode)
            and (read_stat.st_dev, read_stat.st_ino) == (write_stat.st_dev, write_stat.st_ino)):
        return JobserverUnavailable(advice)
    try:
        own_read = os.open(f"/proc/self/fd/{read_fd}", os.O_RDONLY | os.O_NONBLOCK
                           | os.O_CLOEXEC)
    except OSError as exc:
        return JobserverUnavailable(f"cannot open make's jobserver pipe ({exc})")
    return Jobserver(own_read, write_fd, f"pipe {read_fd},{write_fd}", make_jobs)


def _open_fifo(path: str, make_jobs: int) -> Jobserver | JobserverUnavailable:
    try:
        if not stat.S_ISFIFO(os.stat(path).st_mode):
            return JobserverUnavailable(f"make's jobserver {path} is not a fifo")
        read_fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return JobserverUnavailable(f"cannot open make's jobserver fifo {path} ({exc})")
    try:
        write_fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        os.close(read_fd)
        return JobserverUnavailable(f"cannot open make's jobserver fifo {path} ({exc})")
    return Jobserver(read_fd, write_fd, path, make_jobs, owns_write_fd=True)
