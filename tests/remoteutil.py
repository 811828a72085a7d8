"""Helpers of the ``--target`` tests: what the remote store holds, what was shipped."""

from __future__ import annotations

import hashlib
import json
import os
import stat
from pathlib import Path

from tests.buildutil import repx

#: The remote tests' two-stage chain: ``producer`` (each test file writes its own) and
#: ``consumer``, which copies the producer's data.
CHAIN_PIPE = """
{ repx, ... }:
repx.mkPipe rec {
  producer = repx.callStage ./producer.nix [ ];
  consumer = repx.callStage ./consumer.nix [ producer ];
}
"""

COPY_CONSUMER = """
{ pkgs }:
{
  pname = "consumer";
  inputs = { data = ""; };
  outputs = { result = "$out/result.txt"; };
  run = { inputs, outputs, ... }: ''
    cat "${inputs.data}" > "${outputs.result}"
  '';
}
"""


def tree(root: Path) -> dict[str, tuple]:
    """Every entry below ``root``: its type and content (or link target)."""
    entries: dict[str, tuple] = {}
    for path in sorted(root.rglob("*")):
        st = path.lstat()
        name = str(path.relative_to(root))
        if stat.S_ISLNK(st.st_mode):
            entries[name] = ("link", os.readlink(path))
        elif stat.S_ISDIR(st.st_mode):
            entries[name] = ("dir",)
        else:
            entries[name] = ("file", hashlib.sha256(path.read_bytes()).hexdigest())
    return entries


def remote_jobs(folder: Path, target: str) -> dict[str, str]:
    """The remote store's records (job id -> status), asked of the remote repx."""
    result = repx("cache", "ls", "--json", "--target", target, cwd=folder)
    return {row["id"]: row["status"] for row in json.loads(result.stdout)}


def shipped_line(stderr: str) -> str:
    line = next((ln for ln in stderr.splitlines() if "shipped" in ln), None)
    assert line is not None, f"no shipping summary in:\n{stderr}"
    return line
