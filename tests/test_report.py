"""``repx report``: one HTML file, opened in a real headless Chromium as a reader would.

The lab sweeps ``x`` over 1, 2, 3 through two stages; ``gen`` fails for x=2, so its
``score`` is blocked. The browser (not a parser of ours) says what the page shows once its
scripts ran: one row per job with its status, the failure with its params and stderr, the
plots, no console error, and no request beyond the file itself (it opens offline).
"""

from __future__ import annotations

import json
import struct
import zlib
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from repx.lab import LabOptions, open_lab
from tests.browserutil import Browser, require_chromium
from tests.buildutil import build, repx
from tests.conftest import require_nix, write_files

FILES = {
    "lab.nix": """
        { pkgs, repx-lib, gitHash ? "unknown", ... }:
        repx-lib.mkLab {
          inherit pkgs repx-lib gitHash;
          lab_version = "2.1";
          runs = { sweep = repx-lib.callRun ./run.nix [ ]; };
        }
    """,
    "run.nix": """
        { pkgs, repx-lib, ... }:
        { name = "sweep"; pipelines = [ ./pipe.nix ]; params = { x = [ 1 2 3 ]; }; }
    """,
    "pipe.nix": """
        { repx, ... }:
        repx.mkPipe rec {
          gen = repx.callStage ./gen.nix [ ];
          score = repx.callStage ./score.nix [ gen ];
        }
    """,
    "gen.nix": """
        { pkgs }:
        {
          pname = "gen";
          params = { x = 0; mode = "fast"; };
          outputs = { data = "$out/data.txt"; };
          resources = { mem = "1G"; cpus = 1; };
          run = { outputs, params, ... }: ''
            if [ "${toString params.x}" = 2 ]; then
              echo "boom: x=2 is not allowed </script><b>" >&2
              exit 3
            fi
            echo ${toString params.x} > "${outputs.data}"
          '';
        }
    """,
    "score.nix": """
        { pkgs }:
        {
          pname = "score";
          inputs = { data = ""; };
          outputs = { score = "$out/score.txt"; };
          run = { inputs, outputs, ... }: ''
            cat "${inputs.data}" > "${outputs.score}"
          '';
        }
    """,
}


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height of a PNG, checking its signature and that its pixels are not one
    flat colour (a blank page)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    width, height = struct.unpack(">II", data[16:24])
    pos, pixels = 8, b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        if data[pos + 4:pos + 8] == b"IDAT":
            pixels += data[pos + 8:pos + 8 + length]
        pos += 12 + length
    assert len(set(zlib.decompress(pixels)[:2_000_000])) > 16, "the screenshot is blank"
    return width, height


@pytest.fixture
def lab(tmp_path: Path) -> Path:
    require_nix()
    require_chromium()
    folder = tmp_path / "report lab"  # a space: links must be URL-encoded
    write_files(folder, FILES)
    return folder


@pytest.mark.nix
def test_report_opens_offline_with_one_row_per_job_and_the_failure(lab: Path,
                                                                   tmp_path: Path) -> None:
    store = lab / ".repx"
    done = build(lab, store, "-k", "-j2", expect=1)
    assert len(done["failed"]) == 1 and len(done["blocked"]) == 1
    graph = open_lab(LabOptions(lab_dir=str(lab / "result")))
    failed = done["failed"][0]
    statuses = {**{i: "succeeded" for i in done["executed"]}, failed: "failed",
                done["blocked"][0]: "blocked"}
    assert set(statuses) == set(graph.jobs)

    out = lab / "reports" / "report.html"
    out.parent.mkdir()
    answer = repx("report", "-o", str(out), cwd=lab)
    assert "wrote" in answer.stderr and "6 jobs, 1 failed" in answer.stderr
    text = out.read_text()
    assert "</script><b>" not in text.split('id="jobs-data"')[1].split("</script>")[0]

    with Browser() as browser:
        browser.open(out)
        rows = browser.evaluate(
            "[...document.querySelectorAll('#jobs tbody tr.job')]"
            ".map(r => [r.dataset.job, r.dataset.status])")
        assert dict(rows) == statuses and len(rows) == len(graph.jobs)  # one row per job
        header = browser.evaluate("[...document.querySelectorAll('#jobs th')]"
                                  ".map(th => th.textContent)")
        assert header[:5] == ["job", "run", "stage", "status", "x"]  # the sweep: a column
        failures = browser.evaluate(
            "[...document.querySelectorAll('#failure-list li.failure')].map(li => "
            "[li.dataset.job, li.innerText, li.querySelector('a').href])")
        assert [f[0] for f in failures] == [failed]
        _, listed, stderr_href = failures[0]
        assert "x=2" in listed and "mode=fast" in listed and "exit code 3" in listed
        assert "boom: x=2 is not allowed </script><b>" in listed  # escaped, shown as text
        # The stderr link resolves (relative to reports/, through the space) to the log.
        log = Path(unquote(urlparse(stderr_href).path))
        assert log.is_file() and "boom" in log.read_text()
        assert browser.evaluate("document.body.innerText").count("1 job downstream") == 1

        provenance = browser.evaluate("document.getElementById('provenance')"
                                      ".nextElementSibling.innerText")
        lab_id = graph.lab.path.name.split("-", 1)[0]
        for expected in (lab_id, "gitHash", "repx version", "2.1", "first job started"):
            assert expected in provenance
        # The duration plot has a point per job with a duration (the blocked one has none),
        # the graph is Graphviz's SVG with both stages.
        assert browser.evaluate("document.querySelectorAll('svg.durations circle').length") \
            == 5
        graph_text = browser.evaluate("document.querySelector('.graph svg').textContent")
        assert "gen" in graph_text and "score" in graph_text

        # Links to logs and outputs for the jobs that ran, none for the blocked one.
        links = dict(browser.evaluate(
            "[...document.querySelectorAll('#jobs tbody tr.job')]"
            ".map(r => [r.dataset.job, [...r.querySelectorAll('a')].map(a => a.textContent)])"))
        assert links[done["blocked"][0]] == []
        assert all(links[i] == ["stdout", "stderr", "out"] for i in done["executed"])
        # A click on a job's id shows its details, with links to its declared outputs.
        outputs = browser.evaluate(
            f"(() => {{ document.querySelector('tr[data-job=\"{done['executed'][0]}\"] "
            "td.id code').click(); return [...document.querySelectorAll('#jobs tr.detail a')]"
            ".map(a => [a.textContent, a.href]); })()")
        assert len(outputs) == 1
        assert Path(unquote(urlparse(outputs[0][1]).path)).is_file()

        # Filtering in the page: the failed jobs only.
        shown = browser.evaluate(
            "(() => { const s = document.getElementById('f-status'); s.value = 'failed';"
            " s.dispatchEvent(new Event('change'));"
            " return [...document.querySelectorAll('#jobs tbody tr.job')]"
            ".map(r => r.dataset.job); })()")
        assert shown == [failed]

        png = browser.screenshot(tmp_path / "report.png")
        width, height = png_size(png)
        assert width >= 1000 and height > 1200  # the whole page, not one window
        assert browser.errors() == []
        assert browser.requests() == [out.resolve().as_uri()]  # nothing from the network
        # The error check is not vacuous: an error the page logs is seen.
        browser.evaluate("console.error('deliberate')")
        assert browser.errors() == ["deliberate"]

    # A report copied away from the store links to it with absolute file:// URLs.
    away = tmp_path / "elsewhere.html"
    repx("report", "--links", "absolute", "--no-graph", "-o", str(away), cwd=lab)
    page = away.read_text()
    data = json.loads(page.split('id="jobs-data">', 1)[1].split("</script>", 1)[0])
    row = next(j for j in data["jobs"] if j["id"] == failed)
    assert row["dir"].startswith("file:///") and row["s"] == "failed" and row["exit"] == 3
    assert Path(unquote(urlparse(row["dir"]).path), "repx", "stderr.log").is_file()


@pytest.mark.nix
def test_report_without_a_store_and_bad_output(lab: Path) -> None:
    repx("lab", "build", cwd=lab)
    answer = repx("report", "-o", "r.html", "--store", "nowhere", "--no-graph", cwd=lab)
    assert "no repx store at" in answer.stderr and "every job is shown as not run" in \
        answer.stderr
    text = (lab / "r.html").read_text()
    assert "no job has a recorded duration" in text.lower()
    assert "not drawn (--no-graph)" in text

    folder = repx("report", "-o", str(lab), cwd=lab, check=False)
    assert folder.returncode == 2 and "is a folder" in folder.stderr
    assert "Traceback" not in folder.stderr
    missing = repx("report", "-o", "no/such/dir/r.html", cwd=lab, check=False)
    assert missing.returncode == 2 and "does not exist" in missing.stderr
    unknown = repx("report", "nosuchrun", "-o", "r.html", cwd=lab, check=False)
    assert unknown.returncode == 2 and "unknown run 'nosuchrun'" in unknown.stderr
