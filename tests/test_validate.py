"""Build-time script validation, against the real shellcheck, bash and tree-sitter-bash.

No mocks: the point of these checks is to agree with the tools that will judge the scripts,
including Debian's shellcheck 0.9.0 quirks (SC2002 at style level).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from repx.errors import ValidationError
from repx.lab.script_checks import (
    ScriptCheck,
    cache_key,
    called_commands,
    check_script,
    missing_commands,
    validate_scripts,
)

CORE = ["/usr/bin", "/bin"]

pytestmark = pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="shellcheck not installed (run make setup)"
)


def mk(body: str, path_dirs: list[str] | None = None, stage: str = "s") -> ScriptCheck:
    return ScriptCheck(
        stage=stage,
        executable="main",
        file=f"/lab/stages/{stage}.nix",
        body=body,
        path_dirs=CORE if path_dirs is None else path_dirs,
    )


def kinds(body: str, path_dirs: list[str] | None = None) -> list[str]:
    return [f.kind for f in check_script(mk(body, path_dirs))]


# ---------------------------------------------------------------------------------------------
# dependency analysis


def test_missing_command_simple() -> None:
    assert missing_commands("frobnicate --all\n", CORE) == ["frobnicate"]


@pytest.mark.parametrize(
    "body",
    [
        'echo "$(frobnicate x)"\n',
        "echo `frobnicate x`\n",
        "ls | frobnicate | wc -l\n",
        "find . -name '*.txt' -print0 | xargs -0 frobnicate\n",
        "find . | xargs -I {} -n 1 frobnicate {}\n",
        "(cd /tmp && frobnicate)\n",
        "if [ -d x ]; then frobnicate; fi\n",
        'for i in 1 2; do frobnicate "$i"; done\n',
        "x=$(frobnicate)\n",
        "diff <(frobnicate a) <(sort b)\n",
        "timeout 10s frobnicate\n",
        "timeout -k 5 10 frobnicate\n",
        "timeout --signal KILL 10 frobnicate\n",
        "xargs --max-procs 4 -I{} frobnicate {}\n",
        "nice -n 5 frobnicate\n",
        "env FOO=1 BAR=2 frobnicate\n",
        "nohup stdbuf -oL frobnicate &\n",
        "exec frobnicate\n",
        "FOO=bar frobnicate\n",
        "'frobnicate' x\n",
        '"frobnicate" x\n',
        "\\frobnicate x\n",
        "f() { frobnicate; }\nf\n",
    ],
)
def test_missing_command_found_everywhere(body: str) -> None:
    assert missing_commands(body, CORE) == ["frobnicate"]


def test_all_missing_commands_listed_sorted() -> None:
    body = "rsync -a a b\nzzz_tool | aaa_tool\nrsync c d\n"
    assert missing_commands(body, ["/nonexistent"]) == ["aaa_tool", "rsync", "zzz_tool"]


@pytest.mark.parametrize(
    "body",
    [
        'x=1\ny="$x"\n',
        "my_func() { true; }\nmy_func\n",
        "function other { :; }\nother arg\n",
        "echo hi; printf '%s\\n' a; read -r v <<< x; cd /; pwd; set -e; shift || true\n",
        "declare -A m=(); local_x=1; export Y=2; readonly Z=3; unset Y\n",
        "if [[ -f x ]]; then :; elif [ -d y ]; then true; else false; fi\n",
        "case x in a) echo a ;; *) echo b ;; esac\n",
        "while false; do break; done; until true; do continue; done\n",
        "time echo timed\n",
        "command -v frobnicate >/dev/null || echo absent\n",
        '$cmd arg\n${tool} arg\n"${inputs[prog]}" arg\n',
        "./local-script.sh\nbin/tool\n",
        "source /dev/null; . /dev/null\n",
        "(( i = 1 + 2 ))\n",
    ],
)
def test_not_missing(body: str) -> None:
    assert missing_commands(body, ["/nonexistent"]) == []


def test_wrapper_itself_must_exist() -> None:
    """``xargs`` and ``timeout`` are programs (findutils, coreutils), not builtins."""
    assert missing_commands("xargs -0 echo; timeout 5 true\n", ["/nonexistent"]) == [
        "timeout",
        "xargs",
    ]


def test_absolute_paths(tmp_path: Path) -> None:
    assert missing_commands("/bin/sh -c true\n", []) == []
    assert missing_commands(f"{tmp_path}/nope arg\n", []) == [f"{tmp_path}/nope"]


def test_path_dirs_lookup(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    tool = bindir / "mytool"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    data = bindir / "notexec"
    data.write_text("x")
    data.chmod(0o644)
    body = "mytool --x\nnotexec\n"
    assert missing_commands(body, [str(bindir)]) == ["notexec"]
    assert missing_commands(body, ["/nonexistent"]) == ["mytool", "notexec"]


def test_called_commands_and_functions() -> None:
    commands, functions = called_commands("helper() { jq .; }\nhelper | sort\n")
    assert functions == {"helper"}
    assert {"jq", "sort", "helper"} <= commands


# The original's check-deps cases (the analyzer's contract).


def test_original_deps_fail_missing() -> None:
    assert "missing_command" in missing_commands('echo starting; missing_command "some args"', CORE)


def test_original_deps_pass_valid() -> None:
    assert missing_commands("mkdir -p /tmp/foo; ls -la; echo done", CORE) == []


def test_original_deps_pass_complex() -> None:
    body = 'VAR="value"\necho "$VAR"\nmy_func() { true; }\nmy_func\n'
    assert missing_commands(body, CORE) == []
    assert check_script(mk(body)) == []


# ---------------------------------------------------------------------------------------------
# check_script: shellcheck and bash -n


def test_clean_script_passes() -> None:
    body = (
        'mkdir -p "$out/sub"\n'
        'cp "${inputs[data]}" "$out/sub/data.csv"\n'
        'cd "$out"\n'
        'echo "${params[seed]:-1}" > "$out/seed.txt"\n'
    )
    assert check_script(mk(body)) == []


def test_syntax_error_reported() -> None:
    findings = check_script(mk("if true; then\n  echo x\n"))
    assert [f.kind for f in findings] == ["syntax"]
    assert "syntax error" in findings[0].text
    assert "line 3" in findings[0].text  # body line numbers, bash's own words


def test_shellcheck_warning_fails() -> None:
    """SC2154 (referenced but not assigned) is severity warning in shellcheck 0.9."""
    findings = check_script(mk('echo "$never_assigned"\n'))
    assert [f.kind for f in findings] == ["shellcheck"]
    assert findings[0].codes == ["SC2154"]
    assert "line 1:" in findings[0].text  # mapped back from the prelude offset


def test_shellcheck_line_numbers_are_body_lines() -> None:
    findings = check_script(mk('echo ok\necho ok\necho "$never_assigned"\n'))
    assert "line 3:" in findings[0].text


def test_shellcheck_style_passes() -> None:
    """SC2002 (useless cat) and SC2086 (unquoted) are style/info: Debian 0.9.0 flags them."""
    assert kinds("cat /etc/hostname | grep x || true\necho $out\n") == []


def test_runtime_variables_are_known() -> None:
    """The prelude declares out/inputs/params/parameters: no SC2154, no SC2034 from it."""
    body = 'echo "$out" "${inputs[a]}" "${params[b]}" "${parameters[c]}"\n'
    assert check_script(mk(body)) == []
    assert check_script(mk("true\n")) == []


def test_cd_without_exit_is_fine_under_set_e() -> None:
    """The runtime runs under set -e, and the prelude says so: SC2164 must not fire."""
    assert kinds("cd /tmp\n") == []


def test_missing_and_shellcheck_reported_together() -> None:
    assert kinds('frobnicate "$never_assigned"\n') == ["shellcheck", "missing-commands"]


def test_weird_input_never_tracebacks() -> None:
    for body in ["", "\n\n", "\x00", "echo '\udcff'", "(((", "}", "#!/bin/sh\n", "é=1"]:
        check_script(mk(body))


# ---------------------------------------------------------------------------------------------
# validate_scripts: messages, cache


def test_validate_message_names_stage_file_executable_and_commands() -> None:
    checks = [
        ScriptCheck(
            stage="train-model",
            executable="main",
            file="/x/stages/train.nix",
            body="python3 train.py\nrsync -a a b\n",
            path_dirs=["/nonexistent"],
        ),
        mk("echo fine\n", stage="ok-stage"),
    ]
    with pytest.raises(ValidationError) as excinfo:
        validate_scripts(checks)
    message = excinfo.value.message
    assert (
        "stage 'train-model' (file /x/stages/train.nix, executable main): "
        "script calls commands that its runDependencies do not provide: python3, rsync\n"
        "  add them to runDependencies (e.g. runDependencies = [ pkgs.python3 pkgs.rsync ];)"
    ) in message
    assert "ok-stage" not in message


def test_validate_lists_every_failing_stage() -> None:
    checks = [mk("frob_b\n", stage="b"), mk("if\n", stage="a"), mk("true\n", stage="c")]
    with pytest.raises(ValidationError) as excinfo:
        validate_scripts(checks)
    message = excinfo.value.message
    assert "stage 'a'" in message and "stage 'b'" in message and "stage 'c'" not in message
    assert message.index("stage 'a'") < message.index("stage 'b'")
    assert "frob_b" in message


def test_validate_passes_silently() -> None:
    validate_scripts([mk("echo a\n"), mk("ls | wc -l\n", stage="t")])
    validate_scripts([])


def test_cache_skips_work(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    check = mk("echo cached\n")
    validate_scripts([check], cache_dir=cache)
    assert (cache / cache_key(check)).is_file()

    # With no tool on PATH at all, a cached verdict still passes ...
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    validate_scripts([check], cache_dir=cache)
    # ... and an uncached script says that shellcheck is needed, never skips silently.
    with pytest.raises(ValidationError, match="shellcheck is not installed"):
        validate_scripts([mk("echo other\n")], cache_dir=cache)


def test_cache_does_not_record_failures(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    check = mk("frobnicate\n")
    for _ in range(2):
        with pytest.raises(ValidationError):
            validate_scripts([check], cache_dir=cache)
    assert not (cache / cache_key(check)).exists()


def test_cache_key_depends_on_body_and_path() -> None:
    base = mk("echo a\n")
    assert cache_key(base) == cache_key(mk("echo a\n", stage="other"))
    assert cache_key(base) != cache_key(mk("echo b\n"))
    assert cache_key(base) != cache_key(mk("echo a\n", path_dirs=["/usr/bin"]))


def test_unwritable_cache_is_not_an_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    validate_scripts([mk("echo a\n")], cache_dir=blocker / "cache")


def test_many_checks_in_parallel() -> None:
    checks = [mk(f"echo {i}\n", stage=f"s{i}") for i in range(40)]
    checks.append(mk("frob_parallel\n", stage="bad"))
    with pytest.raises(ValidationError) as excinfo:
        validate_scripts(checks)
    assert excinfo.value.message.count("stage '") == 1
    assert "stage 'bad'" in excinfo.value.message
