"""``repx init``: a fresh folder becomes a lab that `repx build` runs at once, and the README's
Quickstart works exactly as typed."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from repx.lab.scaffold import FILES
from tests.conftest import REPO, require_nix
from tests.test_examples import repx


@pytest.mark.nix
def test_init_then_build_in_a_fresh_folder(tmp_path: Path) -> None:
    require_nix()
    out = repx("init", "my-lab", cwd=tmp_path).stdout
    lab = tmp_path / "my-lab"
    for name in FILES:
        assert (lab / name).is_file(), name
        assert f"created {Path('my-lab') / name}" in out
    assert "next: cd my-lab && repx build" in out
    readme = (lab / "README.md").read_text()
    for name in FILES:
        if name != "README.md":
            assert f"`{name}`" in readme, f"README.md does not explain {name}"

    first = repx("build", cwd=lab)
    assert "8 executed, 0 up to date, 0 failed" in first.stdout
    jobs = {j["pname"] for j in json.loads(
        repx("list", "jobs", "--json", "--lab", "result", cwd=lab).stdout)}
    assert jobs == {"generate", "summarize"}
    assert "0 executed, 8 up to date" in repx("build", cwd=lab).stdout

    # Changing one param runs only the new jobs.
    run = lab / "runs" / "sweep.nix"
    run.write_text(run.read_text().replace('"generate.n" = [ 100 1000 ]',
                                           '"generate.n" = [ 100 1000 10 ]'))
    assert "4 executed, 8 up to date" in repx("build", cwd=lab).stdout

    again = repx("init", "my-lab", cwd=tmp_path, check=False)
    assert again.returncode == 2
    assert "already has lab.nix, runs/sweep.nix" in again.stderr and "--force" in again.stderr
    repx("init", "--force", cwd=lab)
    assert run.read_text() == FILES["runs/sweep.nix"]


def quickstart_block() -> list[str]:
    """The commands of the README's Quickstart, as written there."""
    text = (REPO / "README.md").read_text()
    section = text.split("\n## Quickstart: your own lab\n", 1)[1].split("\n## ", 1)[0]
    match = re.search(r"```sh\n(.*?)\n```", section, re.S)
    assert match, "README.md: the Quickstart has no ```sh block"
    return match.group(1).splitlines()


@pytest.mark.nix
def test_readme_quickstart_works_as_typed(tmp_path: Path) -> None:
    require_nix()
    lines = quickstart_block()
    # `make setup` is what `make test` ran before this test; the rest runs verbatim, in a
    # home folder of its own.
    assert lines[0].startswith("make setup ")
    script = "\n".join(lines[1:])
    env = {k: v for k, v in os.environ.items() if k not in ("REPX_STORE", "VIRTUAL_ENV")}
    env.update(HOME=str(tmp_path), PATH="/usr/local/bin:/usr/bin:/bin")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=REPO, env=env,
                            capture_output=True, text=True, check=False, timeout=120)
    assert result.returncode == 0, f"{result.stdout}\n{result.stderr}"
    out = result.stdout
    assert "8 executed, 0 up to date, 0 failed" in out
    assert "4 executed, 8 up to date, 0 failed" in out
    assert re.search(r"^sweep\s+12\s+12\s+0\s+0\s+0$", out, re.M)
    # The DataFrame of the 6 summarize jobs, then the collected summaries (n, seed, count...).
    combinations = sorted((n, s) for n in ("100", "1000") for s in ("1", "2", "3"))
    rows = re.findall(r"^\d+\s+summarize\s+(\d+)\s+(\d+)\s+succeeded\s+[\d.]+$", out, re.M)
    assert sorted(rows) == combinations
    summaries = re.findall(r"^\d+\s+(\d+)\s+(\d+)\s+(\d+)\s+0\.\d+\s+0\.\d+\s+0\.\d+$", out,
                           re.M)
    assert sorted((n, s) for n, s, _ in summaries) == combinations
    assert all(n == count for n, _, count in summaries)  # summarize counted every sample
    assert (tmp_path / "my-lab" / ".repx" / "db").is_dir()


def test_cli_reference_documents_every_command_and_option() -> None:
    """docs/cli.md has a section for every command of `repx --help` naming all its options
    (a command or option added without documenting it fails here)."""
    import click

    from repx.cli import main

    text = (REPO / "docs" / "cli.md").read_text()
    sections = {}
    for block in text.split("\n## ")[1:]:
        title = block.split("\n", 1)[0]
        if title.startswith("`repx "):
            sections[title.strip("`").split(" [")[0].split("`")[0]] = block

    def walk(cmd: click.Command, path: list[str]):
        if isinstance(cmd, click.Group):
            for name, sub in cmd.commands.items():
                yield from walk(sub, [*path, name])
            if not path or not any(isinstance(p, click.Option) and p.name != "help"
                                   for p in cmd.params):
                return
        yield path, cmd

    missing = []
    for path, cmd in walk(main, []):
        name = "repx " + " ".join(path)
        section = next((body for title, body in sections.items()
                        if title == name or title.startswith(name + " ")), None)
        if section is None:
            missing.append(f"no section for `{name}`")
            continue
        for param in cmd.params:
            if isinstance(param, click.Option):
                for opt in [*param.opts, *param.secondary_opts]:
                    if f"`{opt}" not in section and f" {opt}" not in section:
                        missing.append(f"`{name}`: option {opt}")
        if "```sh" not in section:
            missing.append(f"`{name}`: no example")
    global_options = text.split("**Global options**", 1)[1].split("\n---", 1)[0]
    for param in main.params:
        for opt in param.opts:
            if opt not in global_options:
                missing.append(f"global option {opt}")
    assert not missing, "docs/cli.md is missing:\n" + "\n".join(missing)
