"""Jobs under bwrap, podman and docker see what they declare and nothing else.

* Every example (among them ``scatter-gather``: steps, a gather reading its workers'
  folders; ``inter-run``: a run manifest; ``param-sweep``: python3) gives the same job ids
  and byte-identical outputs under native, bwrap and podman.
* A script calling a host tool by absolute path (``/usr/bin/env``) runs natively and fails
  under bwrap and podman with the error in its log; writes to ``/tmp`` and ``$HOME`` leave
  the host's untouched; a TCP server on 127.0.0.1 is reachable only with ``--network``;
  ``--mount FILE`` makes that file readable and nothing next to it.
* An exported lab runs with ``--lab lab.tar --runtime bwrap`` (its unpacked store) and
  ``--runtime podman`` (its images) where ``/nix`` is empty and no ``nix-*`` command is on
  PATH, with the native build's outputs.
* What a job leaves running is waited for under bwrap (as root) and killed with its
  container under podman; Ctrl-C stops a job under either, and leaves no container.
* docker (a ``dockerd`` this test starts) runs ``simple`` with the same outputs; a machine
  where dockerd cannot start fails that test saying why.

Everything is real: Nix builds the labs and images, bwrap, podman and docker run the jobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from repx.engine.runtimes import parse_mount, runtime_from_env
from repx.errors import UsageError
from tests.buildutil import (
    REPX,
    build,
    copy_example,
    list_jobs,
    out_dir,
    process_alive,
    repx,
    repx_env,
    start_build,
    wait_for,
    write_lab,
)
from tests.conftest import require_nix
from tests.imageutil import Podman, write_two_run_lab

pytestmark = pytest.mark.nix

EXAMPLES = ("simple", "scatter-gather", "inter-run", "param-sweep", "zip-sweep", "dirs-files",
            "original-style")


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    engine = Podman(tmp_path_factory.mktemp("podman"))
    yield engine
    engine.close()


def podman_env(engine: Podman) -> dict[str, str]:
    """The environment that points ``repx build --runtime podman`` at the private podman."""
    return {"REPX_PODMAN": shlex.join(engine.command),
            "CONTAINERS_CONF": engine.env["CONTAINERS_CONF"]}


def require_bwrap() -> None:
    if shutil.which("bwrap") is None:
        pytest.fail("bwrap is not installed (apt-get install bubblewrap)", pytrace=False)


def out_trees(store: Path, job_ids: list[str]) -> dict[str, dict[str, str]]:
    """sha256 of every file of each job's out/, by path relative to it."""
    trees = {}
    for job_id in job_ids:
        root = out_dir(store, job_id)
        trees[job_id] = {
            str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file()
        }
    return trees


@pytest.mark.parametrize("example", EXAMPLES)
def test_examples_give_the_same_outputs_under_every_runtime(
        example: str, tmp_path: Path, podman: Podman) -> None:
    require_nix()
    require_bwrap()
    folder = copy_example(example, tmp_path)
    results = {}
    for runtime in ("native", "bwrap", "podman"):
        store = tmp_path / f"store-{runtime}"
        done = build(folder, store, "--runtime", runtime, env=podman_env(podman))
        assert done.data["failed"] == [] and done.data["executed"], done.stderr
        results[runtime] = (sorted(done.data["executed"]),
                            out_trees(store, done.data["executed"]))
    ids = {runtime: r[0] for runtime, r in results.items()}
    assert ids["bwrap"] == ids["native"] and ids["podman"] == ids["native"]
    assert results["bwrap"][1] == results["native"][1]
    assert results["podman"][1] == results["native"][1]
    # Every job ran in its image: podman has it, under the digest the lab lists.
    assert podman.run("images", "-q").stdout.strip()


# -------------------------------------------------------------- what a sandbox lets a job do

def _run_files(name: str, body: str) -> dict[str, str]:
    return {
        f"run-{name}.nix": f'{{ ... }}: {{ name = "{name}"; '
                           f"pipelines = [ ./pipe-{name}.nix ]; params = {{ }}; }}\n",
        f"pipe-{name}.nix": f"{{ repx, ... }}:\nrepx.mkPipe {{ work = repx.callStage "
                            f"./stage-{name}.nix [ ]; }}\n",
        f"stage-{name}.nix": "{ pkgs }:\n{\n"
                             f'  pname = "{name}";\n'
                             '  outputs = { result = "$out/result.txt"; };\n'
                             "  run = { outputs, ... }: ''\n"
                             f"{body}"
                             "  '';\n}\n",
    }


CONFINEMENT_LAB = """
{ pkgs, repx-lib, gitHash ? "unknown", ... }:
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "1.0";
  runs = {
    host = repx-lib.callRun ./run-host.nix [ ];
    writes = repx-lib.callRun ./run-writes.nix [ ];
    net = repx-lib.callRun ./run-net.nix [ ];
    mount = repx-lib.callRun ./run-mount.nix [ ];
  };
}
"""

STAGES = {
    # An undeclared host tool, by absolute path.
    "host": """
    /usr/bin/env true
    echo ran > "${outputs.result}"
    """,
    "writes": """
    echo from-the-job > /tmp/@MARK@
    echo from-the-job > "$HOME/@MARK@"
    echo wrote > "${outputs.result}"
    """,
    "net": """
    exec 3<>/dev/tcp/127.0.0.1/@PORT@
    echo hello >&3
    echo connected > "${outputs.result}"
    """,
    "mount": """
    cat "@SECRET@" > "${outputs.result}"
    if cat "@OTHER@"; then echo "the file next to the mount is readable" >&2; exit 1; fi
    """,
}


class TcpServer:
    """A TCP server on 127.0.0.1 that counts the connections it accepts."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def confinement(tmp_path: Path) -> Iterator[tuple[Path, dict[str, str], TcpServer]]:
    """The four-run lab, its placeholders, and the TCP server its ``net`` job calls."""
    require_nix()
    require_bwrap()
    server = TcpServer()
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "shared.txt").write_text("the mounted secret\n")
    (secrets / "other.txt").write_text("not mounted\n")
    values = {"MARK": f"repx-runtime-test-{os.getpid()}-{tmp_path.name}",
              "PORT": str(server.port), "SECRET": str(secrets / "shared.txt"),
              "OTHER": str(secrets / "other.txt")}
    files = {"lab.nix": CONFINEMENT_LAB}
    for name, body in STAGES.items():
        files.update(_run_files(name, body))
    folder = write_lab(tmp_path / "lab", files, **values)
    yield folder, values, server
    server.close()
    for leftover in (Path("/tmp") / values["MARK"], Path.home() / values["MARK"]):
        leftover.unlink(missing_ok=True)


def _log(store: Path, job_id: str) -> str:
    return (out_dir(store, job_id).parent / "repx" / "stderr.log").read_text()


@pytest.mark.parametrize("runtime", ["bwrap", "podman"])
def test_a_sandboxed_job_sees_only_what_it_declares(
        runtime: str, confinement: tuple[Path, dict[str, str], TcpServer], tmp_path: Path,
        podman: Podman) -> None:
    folder, values, server = confinement
    env = podman_env(podman)
    # Natively the undeclared host tool is there.
    native = build(folder, tmp_path / "native", "host")
    assert len(native.data["executed"]) == 1
    jobs = {job["pname"]: job["id"] for job in list_jobs(folder)}

    store = tmp_path / "isolated"
    isolated = build(folder, store, "--runtime", runtime, "-k", expect=1, env=env)
    assert sorted(isolated.data["failed"]) == sorted([jobs["host"], jobs["net"],
                                                       jobs["mount"]])
    assert isolated.data["executed"] == [jobs["writes"]]
    assert "/usr/bin/env: No such file or directory" in _log(store, jobs["host"])
    # The job wrote its /tmp and $HOME: private ones; the host's have no such file.
    assert not (Path("/tmp") / values["MARK"]).exists()
    assert not (Path.home() / values["MARK"]).exists()
    assert server.accepted == 0
    assert "/dev/tcp/127.0.0.1" in _log(store, jobs["net"])
    assert values["SECRET"] in _log(store, jobs["mount"])

    # With --network and --mount of one file: the server is reached, the file is read, the
    # file next to it is still not there.
    allowed = tmp_path / "allowed"
    done = build(folder, allowed, "--runtime", runtime, "--network",
                 "--mount", f"{values['SECRET']}:ro", "net", "mount", expect=None, env=env)
    assert sorted(done.data["executed"]) == sorted([jobs["net"], jobs["mount"]]), done.stderr
    assert server.accepted == 1
    result = out_dir(allowed, jobs["mount"]) / "result.txt"
    assert result.read_text() == "the mounted secret\n"
    assert "other.txt: No such file or directory" in _log(allowed, jobs["mount"])


def test_bad_runtime_settings_are_usage_errors(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="does not exist"):
        parse_mount(str(tmp_path / "missing"))
    with pytest.raises(UsageError, match="cannot be mounted"):
        parse_mount("/nix/store")
    assert parse_mount(f"{tmp_path}:rw").writable
    assert not parse_mount(str(tmp_path)).writable
    with pytest.raises(UsageError, match="REPX_RUNTIME='kvm'"):
        os.environ["REPX_RUNTIME"] = "kvm"
        try:
            runtime_from_env()
        finally:
            del os.environ["REPX_RUNTIME"]
    folder = copy_example("simple", tmp_path)
    result = repx("build", "--store", str(tmp_path / "s"), "--mount", str(tmp_path),
                  cwd=folder, check=False)
    assert result.returncode == 2
    assert "need an isolating runtime" in result.stderr


# ---------------------------------------------------------------- an exported lab, no Nix

def test_an_exported_lab_runs_where_nix_is_not(tmp_path: Path, podman: Podman) -> None:
    require_nix()
    require_bwrap()
    if shutil.which("unshare") is None:
        pytest.fail("unshare (util-linux) is needed to hide /nix", pytrace=False)
    folder = copy_example("simple", tmp_path)
    native = build(folder, tmp_path / "native")
    executed = sorted(native.data["executed"])
    repx("lab", "export", "-o", str(tmp_path / "lab.tar"), cwd=folder)
    # PATH: the host tools repx itself runs (bash and shellcheck validate the scripts, podman$
    # runs containers), no nix-*.
    no_nix_bin = tmp_path / "bin"
    no_nix_bin.mkdir()
    for tool in ("shellcheck", "bash", "podman"):
        found = shutil.which(tool)
        if found is None:
            pytest.fail(f"{tool} is not installed (make setup)", pytrace=False)
        (no_nix_bin / tool).symlink_to(found)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    # In a mount namespace of its own /nix is an empty tmpfs; PATH has no nix-* command.
    script = ('/bin/mount -t tmpfs tmpfs /nix || exit 90; '
              '[ -z "$(/bin/ls -A /nix)" ] || exit 91; '
              'command -v nix-build nix-store nix && exit 92; exec "$@"')
    for runtime in ("bwrap", "podman"):
        store = tmp_path / f"store-{runtime}"
        env = repx_env({"PATH": str(no_nix_bin), "REPX_BWRAP": shutil.which("bwrap") or "",
                        "XDG_CACHE_HOME": str(tmp_path / "cache"), **podman_env(podman)})
        result = subprocess.run(
            ["/usr/bin/unshare", "-m", "--propagation", "private", "/bin/sh", "-c", script,
             "sh", *REPX, "build", "--lab", str(tmp_path / "lab.tar"), "--runtime", runtime,
             "--store", str(store), "--json", "-q"],
            cwd=elsewhere, env=env, capture_output=True, text=True, timeout=300, check=False)
        assert result.returncode == 0, (f"{runtime}: {result.returncode}\n{result.stdout}\n"
                                        f"{result.stderr}")
        assert sorted(json.loads(result.stdout)["executed"]) == executed
        assert out_trees(store, executed) == out_trees(tmp_path / "native", executed)


# ----------------------------------------------------------------------------------- docker

@pytest.fixture(scope="module")
def dockerd() -> Iterator[dict[str, str]]:
    """A private docker daemon (its own data root and socket); its DOCKER_HOST."""
    for tool in ("docker", "dockerd"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is not installed (apt-get install docker.io)", pytrace=False)
    base = Path(tempfile.mkdtemp(prefix="repx-dockerd-", dir="/tmp"))
    sock = base / "docker.sock"
    log = (base / "dockerd.log").open("w")
    process = subprocess.Popen(
        ["dockerd", "--data-root", str(base / "data"), "--exec-root", str(base / "exec"),
         "--host", f"unix://{sock}", "--pidfile", str(base / "docker.pid"),
         "--iptables=false", "--bridge=none"],
        stdout=log, stderr=subprocess.STDOUT)
    env = {"DOCKER_HOST": f"unix://{sock}"}
    deadline = time.monotonic() + 30
    while True:
        ping = subprocess.run(["docker", "version", "--format", "{{.Server.Version}}"],
                              env={**os.environ, **env}, capture_output=True, check=False)
        if ping.returncode == 0:
            break
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            log.close()
            pytest.fail("dockerd could not start on this machine, so the docker runtime "
                        "cannot be tested:\n" + (base / "dockerd.log").read_text()[-3000:],
                        pytrace=False)
        time.sleep(0.3)
    yield env
    subprocess.run(["docker", "system", "prune", "--all", "--force"],
                   env={**os.environ, **env}, capture_output=True, check=False)
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
    log.close()
    shutil.rmtree(base, ignore_errors=True)


def test_docker_gives_the_native_outputs(tmp_path: Path, dockerd: dict[str, str]) -> None:
    require_nix()
    folder = copy_example("simple", tmp_path)
    native = build(folder, tmp_path / "native")
    docker = build(folder, tmp_path / "docker", "--runtime", "docker", env=dockerd)
    executed = sorted(native.data["executed"])
    assert sorted(docker.data["executed"]) == executed, docker.stderr
    assert out_trees(tmp_path / "docker", executed) == out_trees(tmp_path / "native", executed)


# ------------------------------------------------------------- leftovers and cancelling

LEFTOVER_LAB = """
{ pkgs, repx-lib, gitHash ? "unknown", ... }:
repx-lib.mkLab {
  inherit pkgs repx-lib gitHash;
  lab_version = "1.0";
  runs = {
    leftover = repx-lib.callRun ./run-leftover.nix [ ];
    slow = repx-lib.callRun ./run-slow.nix [ ];
  };
}
"""

LEFTOVER_STAGES = {
    # The main process exits at once; what it started writes the output a second later.
    "leftover": """
    ( sleep 1; echo late > "${outputs.result}" ) &
    """,
    "slow": """
    echo "$$" > started
    sleep 300
    echo never > "${outputs.result}"
    """,
}


@pytest.fixture
def leftover_lab(tmp_path: Path) -> Path:
    require_nix()
    require_bwrap()
    files = {"lab.nix": LEFTOVER_LAB}
    for name, body in LEFTOVER_STAGES.items():
        files.update(_run_files(name, body))
    return write_lab(tmp_path / "lab", files)


def test_leftover_processes_under_bwrap_are_waited_for_and_in_podman_killed(
        leftover_lab: Path, tmp_path: Path, podman: Podman) -> None:
    # bwrap (as root) keeps the host's PID namespace: the scheduler waits for what a job
    # left running, as natively. A container ends with its main process, leftovers too.
    done = build(leftover_lab, tmp_path / "bwrap", "--runtime", "bwrap", "leftover")
    (job_id,) = done.data["executed"]
    assert (out_dir(tmp_path / "bwrap", job_id) / "result.txt").read_text() == "late\n"
    failed = build(leftover_lab, tmp_path / "podman", "--runtime", "podman", "leftover",
                   expect=1, env=podman_env(podman))
    assert failed.data["failed"] == [job_id]
    assert "result" in failed.data["failures"][0]["reason"]


@pytest.mark.parametrize("runtime", ["bwrap", "podman"])
def test_ctrl_c_stops_the_sandbox(runtime: str, leftover_lab: Path, tmp_path: Path,
                                  podman: Podman) -> None:
    store = tmp_path / "store"
    running = start_build(leftover_lab, store, "--runtime", runtime, "slow",
                          env=podman_env(podman))
    try:
        wait_for(lambda: bool(list(store.glob("outputs/*/out/started"))),
                 "the job to start", timeout=60)
        started = list(store.glob("outputs/*/out/started"))
        wait_for(lambda: started[0].read_text().strip() != "", "the job's pid")
        pid = int(started[0].read_text())
        os.kill(running.proc.pid, signal.SIGINT)
        result = running.wait(timeout=40)
    finally:
        running.kill()
    assert result.code == 130, result.stderr
    assert len(result["cancelled"]) == 1
    if runtime == "bwrap":
        assert not process_alive(pid), "the job's shell survived the interrupted build"
    else:
        listed = podman.run("ps", "--all", "--format", "{{.Names}}").stdout
        assert "repx-" not in listed, listed


def test_a_container_runtime_refuses_a_lab_without_images(tmp_path: Path,
                                                          podman: Podman) -> None:
    require_nix()
    folder = write_two_run_lab(tmp_path / "lab")
    result = repx("build", "--store", str(tmp_path / "store"), "--runtime", "podman",
                  "--argstr", "mode", "none", cwd=folder, check=False, env=podman_env(podman))
    assert result.returncode == 2, result.stderr
    assert 'containerMode = "none"' in result.stderr
    assert "--runtime bwrap" in result.stderr
