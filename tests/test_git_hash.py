"""The lab's git commit (``git_hash``, recorded in lab.json): git itself answers wherever a
repository could be, and a folder no repository can reach gets "unknown" without starting
git (a no-op build is timed in milliseconds). Real git, real folders."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from repx.lab.nix import _may_be_in_git, git_hash


def git(*args: str, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
                          cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


def committed_repo(folder: Path) -> str:
    """A repository in ``folder`` with one commit; its id."""
    folder.mkdir(parents=True)
    git("init", "-q", cwd=folder)
    (folder / "lab.nix").write_text("{ ... }: { }\n")
    git("add", ".", cwd=folder)
    git("commit", "-qm", "lab", cwd=folder)
    return git("rev-parse", "HEAD", cwd=folder)


@pytest.fixture(autouse=True)
def no_git_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GIT_DIR", raising=False)


def test_a_folder_outside_any_repository_is_unknown_without_git(tmp_path: Path) -> None:
    lab = tmp_path / "lab" / "sub"
    lab.mkdir(parents=True)
    assert git_hash(lab) == "unknown"
    assert not _may_be_in_git(lab)
    assert subprocess.run(["git", "-C", str(lab), "rev-parse", "HEAD"],
                          capture_output=True, check=False).returncode != 0  # git agrees


def test_a_folder_in_a_repository_gets_its_commit_and_dirty(tmp_path: Path) -> None:
    commit = committed_repo(tmp_path / "repo")
    sub = tmp_path / "repo" / "labs" / "one"
    sub.mkdir(parents=True)
    assert git_hash(sub) == commit
    (tmp_path / "repo" / "lab.nix").write_text("{ ... }: { edited = true; }\n")
    assert git_hash(sub) == f"{commit}-dirty"


def test_a_link_into_a_repository_is_followed_as_git_follows_it(tmp_path: Path) -> None:
    commit = committed_repo(tmp_path / "repo")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "link").symlink_to(tmp_path / "repo")
    assert git_hash(tmp_path / "outside" / "link") == commit


def test_a_worktree_and_a_bare_repository_count_as_repositories(tmp_path: Path) -> None:
    commit = committed_repo(tmp_path / "repo")
    git("worktree", "add", "-q", str(tmp_path / "tree"), cwd=tmp_path / "repo")
    assert (tmp_path / "tree" / ".git").is_file()
    assert git_hash(tmp_path / "tree") == commit
    git("clone", "-q", "--bare", str(tmp_path / "repo"), str(tmp_path / "bare"), cwd=tmp_path)
    assert _may_be_in_git(tmp_path / "bare")


def test_git_dir_in_the_environment_leaves_the_answer_to_git(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commit = committed_repo(tmp_path / "repo")
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.setenv("GIT_DIR", str(tmp_path / "repo" / ".git"))
    assert _may_be_in_git(tmp_path / "elsewhere")
    assert git_hash(tmp_path / "elsewhere").startswith(commit)
