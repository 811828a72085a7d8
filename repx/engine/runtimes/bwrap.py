"""The bwrap runtime: each job in a bubblewrap sandbox that holds its closure and its folders.

What the job sees (``bwrap`` arguments in this order, later binds over earlier ones):

* ``/nix/store`` read-only: the host's store, or an unpacked export's store
  (:attr:`repx.lab.export.UnpackedLab.store_dir`), so a lab runs where Nix is not;
* ``/dev``, a fresh ``/proc`` and a private ``/tmp`` (tmpfs; also HOME and TMPDIR);
* its inputs read-only, the user's ``--mount`` paths, then its own ``out/`` and ``repx/``
  folders read-write, each at its host path;
* nothing else: no ``/usr``, ``/etc``, ``/home``. Nothing in a job's contract needs ``/etc``
  (numeric ids suffice; a job that asks for its user name finds none), so none is bound.

Namespaces: IPC, UTS, cgroup and (unless ``--network``) network are private. The PID
namespace is the host's when repx runs as root: the job's processes then stay visible to
the scheduler, which is a child subreaper, so what a job leaves running is waited for and
killed exactly as natively (``--die-with-parent`` ends the sandbox with the scheduler). A
user who is not root gets a user namespace, which needs a PID namespace of its own to
mount ``/proc``; there the sandbox's init ends with the job's main process and the kernel
kills what it left running.
"""

from __future__ import annotations

import os
import shutil

from repx.engine.runtimes.common import (
    NIX_STORE,
    SANDBOX_TMP,
    JobSandbox,
    Mount,
    Runtime,
    sandbox_env,
)
from repx.errors import UsageError

#: The environment variable naming the bwrap program (default: ``bwrap`` on PATH).
BWRAP_ENV = "REPX_BWRAP"


class BwrapRuntime(Runtime):
    """Runs jobs under ``bwrap``; see the module docstring for what they see."""

    name = "bwrap"
    isolating = True

    def __init__(self, *, store_dir: str = NIX_STORE, mounts: tuple[Mount, ...] = (),
                 network: bool = False) -> None:
        program = os.environ.get(BWRAP_ENV) or "bwrap"
        found = shutil.which(program)
        if found is None:
            raise UsageError(f"--runtime bwrap: {program} is not installed (apt-get install "
                             f"bubblewrap, or set {BWRAP_ENV} to its path)")
        if not os.path.isdir(store_dir):
            raise UsageError(f"--runtime bwrap: {store_dir} does not exist: the jobs' "
                             "closures are not on this machine (export the lab with `repx "
                             "lab export` and build with --lab lab.tar)")
        self.program = found
        self.store_dir = store_dir
        self.mounts = mounts
        self.network = network
        namespaces = ["--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if not network:
            namespaces.append("--unshare-net")
        if os.geteuid() != 0:
            namespaces += ["--unshare-user", "--unshare-pid"]
        self._prefix = [
            found, "--die-with-parent", *namespaces,
            "--ro-bind", store_dir, NIX_STORE,
            "--dev", "/dev", "--proc", "/proc", "--tmpfs", SANDBOX_TMP,
        ]

    def wrap(self, sandbox: JobSandbox) -> tuple[list[str], dict[str, str]]:
        args = list(self._prefix)
        for path in sandbox.read_only:
            args += ["--ro-bind-try", path, path]
        for mount in self.mounts:
            args += ["--bind" if mount.writable else "--ro-bind", mount.path, mount.path]
        for path in sandbox.writable:
            args += ["--bind", path, path]
        args += ["--chdir", sandbox.out_dir, "--", *sandbox.argv]
        return args, sandbox_env(sandbox.env)
