"""``repx init``: a fresh folder becomes a lab that `repx build` runs at once, and the README's
Quickstart works exactly as typed."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from repx.lab import scaffold
from tests.conftest import REPO, require_nix
from tests.test_examples import repx


@pytest.mark.nix
def test_init_then_build_in_a_fresh_folder(tmp_path: Path) -> None:
    require_nix()
    out = repx("init", "my-lab", cwd=tmp_path).stdout
    lab = tmp_path / "my-lab"
    for name in scaffold.LAB_FILES:
        assert (lab / name).is_file(), name
        assert f"created {Path('my-lab') / name}" in out
    assert not (lab / "flake.nix").exists()  # only with --flake
    assert "next: cd my-lab && repx build" in out
    readme = (lab / "README.md").read_text()
    for name in [*scaffold.LAB_FILES, scaffold.FLAKE_FILE]:
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
    assert run.read_text() == scaffold.scaffold_files("my-lab")["runs/sweep.nix"]


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
            # Through list_commands/get_command: `repx`'s families load on first use, so
            # its `commands` dict is empty until something asks for them.
            context = click.Context(cmd)
            for name in cmd.list_commands(context):
                sub = cmd.get_command(context, name)
                assert sub is not None, name
                if not sub.hidden:  # a remote half such as `_pull-serve`, never typed
                    yield from walk(sub, [*path, name])
            if not path or not any(isinstance(p, click.Option) and p.name != "help"
                                   for p in cmd.params):
                return
        yield path, cmd

    missing = []
    walked = 0
    for path, cmd in walk(main, []):
        walked += 1
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
    assert walked >= 30, f"only {walked} commands were walked"  # not a vacuous pass


# ----------------------------------------------------------- --name, --flake, the template

#: What `repx init --flake` writes, NAME and FLAKE_DIR filled in: the lab's flake takes this
#: machine's repx flake as its input and builds ./lab.nix with repx's library.
EXPECTED_FLAKE = """\
{
  description = "NAME: a repx lab";
  # The repx flake: this machine's installed copy (works offline). With internet, a
  # published repx can be used instead, e.g. "github:OWNER/repx".
  inputs.repx.url = "path:FLAKE_DIR";
  outputs = { self, repx }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: builtins.listToAttrs (map (system: { name = system; value = f system; }) systems);
      gitHash = self.rev or self.dirtyRev or "dirty";
    in {
      packages = forAllSystems (system:
        let
          # Without nixpkgs: the host package set (needs --impure). With nixpkgs:
          #   pkgs = import nixpkgs { inherit system; overlays = [ repx.overlays.default ]; };
          pkgs = repx.legacyPackages.${system};
          lab = import ./lab.nix { inherit pkgs gitHash; repx-lib = repx.lib; };
        in {
          lab = lab.lab // { inherit (lab) runs; };
          default = lab.lab;
        });
    };
}
"""  # noqa: E501 - the flake as written, one long line included


def nix_parses(path: Path) -> None:
    """``path`` is valid Nix (parsed by Nix itself; nothing is evaluated or built)."""
    result = subprocess.run(["nix-instantiate", "--parse", str(path)], capture_output=True,
                            text=True, check=False)
    assert result.returncode == 0, f"{path}: {result.stderr}"


def test_the_template_is_the_scaffold_plus_a_flake() -> None:
    """nix/templates/default holds exactly the scaffold's files and flake.nix (one source:
    the scaffold reads them there), named after the template's lab, with the url
    placeholder that `repx init --flake` replaces."""
    template = scaffold.TEMPLATE_DIR
    held = sorted(str(p.relative_to(template)) for p in template.rglob("*") if p.is_file())
    assert held == sorted([*scaffold.LAB_FILES, scaffold.FLAKE_FILE])
    for name in scaffold.LAB_FILES:
        assert scaffold.scaffold_files()[name] == (template / name).read_text()
    flake = (template / scaffold.FLAKE_FILE).read_text()
    assert f'inputs.repx.url = "{scaffold.REPX_URL_PLACEHOLDER}";' in flake
    assert f'description = "{scaffold.TEMPLATE_NAME}: a repx lab";' in flake
    assert scaffold.TEMPLATE_COMMENT in flake  # the placeholder is explained to its users


@pytest.mark.nix
def test_template_flake_and_lab_files_are_valid_nix() -> None:
    require_nix()
    template = scaffold.TEMPLATE_DIR
    for name in [scaffold.FLAKE_FILE, *scaffold.LAB_FILES]:
        if name.endswith(".nix"):
            nix_parses(template / name)


def test_name_is_written_where_the_lab_is_named(tmp_path: Path) -> None:
    out = repx("init", "lab", "--name", "ablation-2.b_x", cwd=tmp_path).stdout
    lab = tmp_path / "lab"
    assert "created lab/lab.nix" in out
    assert (lab / "README.md").read_text().startswith("# ablation-2.b_x: a repx lab\n")
    assert (lab / "lab.nix").read_text().startswith("# ablation-2.b_x: a repx lab, ")
    for name in scaffold.LAB_FILES:
        text = (lab / name).read_text()
        assert scaffold.TEMPLATE_NAME not in text, name
        # Only the name differs from the template.
        template = (scaffold.TEMPLATE_DIR / name).read_text()
        assert text == template.replace(scaffold.TEMPLATE_NAME, "ablation-2.b_x"), name
    assert not (lab / "flake.nix").exists()


def test_name_defaults_to_the_folder_name(tmp_path: Path) -> None:
    repx("init", "noise study", cwd=tmp_path)
    readme = (tmp_path / "noise study" / "README.md").read_text()
    assert readme.startswith("# noise-study: a repx lab\n")  # made a valid name


@pytest.mark.parametrize("name", ["my lab", "-lab", "lab/x", 'a"b', "", "ünï"])
def test_invalid_name_is_a_clear_error_and_writes_nothing(name: str, tmp_path: Path) -> None:
    result = repx("init", "lab", "--name", name, cwd=tmp_path, check=False)
    assert result.returncode == 2
    assert f"repx: --name {name!r} is not a valid lab name: use letters, digits, '-', '_' " \
           "and '.', starting with a letter or digit" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "lab").exists()


def test_flake_writes_a_flake_using_this_repx(tmp_path: Path) -> None:
    out = repx("init", "study", "--flake", "--name", "study-1", cwd=tmp_path).stdout
    lab = tmp_path / "study"
    assert "created study/flake.nix" in out
    flake = (lab / "flake.nix").read_text()
    flake_dir = str(scaffold.FLAKE_DIR)
    assert flake == EXPECTED_FLAKE.replace("NAME", "study-1").replace("FLAKE_DIR", flake_dir)
    url = re.search(r'^  inputs\.repx\.url = "(.*)";$', flake, re.M)
    assert url and url.group(1) == f"path:{flake_dir}"
    assert (Path(flake_dir) / "flake.nix").is_file()  # the input is a flake indeed
    assert "[template]" not in flake
    for name in scaffold.LAB_FILES:  # the lab files are the plain scaffold's
        assert (lab / name).read_text() == scaffold.scaffold_files("study-1")[name], name


def test_flake_refuses_an_existing_flake_unless_forced(tmp_path: Path) -> None:
    lab = tmp_path / "lab"
    lab.mkdir()
    (lab / "flake.nix").write_text("{ outputs = _: { }; }\n")
    refused = repx("init", "lab", "--flake", cwd=tmp_path, check=False)
    assert refused.returncode == 2
    assert "repx: lab already has flake.nix; choose an empty folder, or pass --force" \
        in refused.stderr
    assert not (lab / "lab.nix").exists()  # nothing written
    # Without --flake the existing flake.nix is not the scaffold's business.
    repx("init", "lab", cwd=tmp_path)
    assert (lab / "flake.nix").read_text() == "{ outputs = _: { }; }\n"
    repx("init", "lab", "--flake", "--force", cwd=tmp_path)
    assert 'inputs.repx.url = "path:' in (lab / "flake.nix").read_text()


def test_flake_input_of_a_path_with_spaces_is_a_nix_string(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scaffold, "FLAKE_DIR", Path('/opt/my repx/"x"'))
    flake = scaffold.scaffold_files("lab", flake=True)["flake.nix"]
    assert '  inputs.repx = { type = "path"; path = "/opt/my repx/\\"x\\""; };' in flake


@pytest.mark.nix
def test_a_repx_in_a_folder_with_awkward_characters_is_named_as_a_plain_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Nix 2.8 decodes no percent-escape in a path: URL, so such a repx folder is written in
    the input's attribute-set form, which Nix resolves (checked with a real flake)."""
    require_nix()
    awkward = tmp_path / 're px "ü" ${x}'
    awkward.mkdir()
    (awkward / "flake.nix").write_text('{ outputs = { self }: { answer = "42"; }; }\n')
    monkeypatch.setattr(scaffold, "FLAKE_DIR", awkward)
    flake = scaffold.scaffold_files("study", flake=True)[scaffold.FLAKE_FILE]
    assert "inputs.repx.url" not in flake and 'inputs.repx = { type = "path"; path = ' in flake
    lab = tmp_path / "lab"
    lab.mkdir()
    line = next(li for li in flake.splitlines() if "inputs.repx = " in li)
    (lab / "flake.nix").write_text(
        "{\n" + line + "\n  outputs = { self, repx }: { answer = repx.answer; };\n}\n")
    result = subprocess.run(
        ["nix", "--extra-experimental-features", "nix-command flakes", "eval", "--raw",
         ".#answer"], cwd=lab, capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "42"
