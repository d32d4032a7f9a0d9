"""The workflow's HTML report, rendered offline by headless Chromium: every figure embedded and displayed."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from tests.conftest import service_unavailable

# Every external fetch fails: the report must render from its own bytes.
OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9"]
EXTERNAL_RESOURCE = re.compile(r"<(?:script|link|img|iframe)\b[^>]*\b(?:src|href)=[\"']?(?:https?:)?//", re.I)
SHOW_RESULT = """<script>
window.addEventListener("load", function () {
  setTimeout(function () {
    var path = %s;
    app.showCategory(%s);
    app.setView({content: "img", contentPath: results[path].data_uri, resultPath: path});
    setTimeout(function () {
      var shown = Array.from(document.querySelectorAll("#app img")).filter(function (img) {
        return img.src === results[path].data_uri;
      });
      document.body.setAttribute("data-shown", shown.length && shown[0].complete
        ? shown[0].naturalWidth + "x" + shown[0].naturalHeight : "none");
    }, 1000);
  }, 500);
});
</script>"""


def chromium(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    executable = shutil.which("chromium")
    if executable is None:
        service_unavailable("the report test needs Debian's chromium package (apt-get install chromium; .ci/run does it)")
    command = [executable, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1400,1000",
               "--virtual-time-budget=20000", f"--user-data-dir={tmp_path / 'chromium-profile'}", *OFFLINE, *args,
               page.as_uri()]
    result = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-2000:]
    return result


def embedded_results(report: str) -> dict:
    """The report's results table: path -> name, caption, mime type, data URI."""
    match = re.search(r'<script id="results">\s*var results = (.*?);\s*</script>', report, re.S)
    assert match, "no results in the report"
    return json.loads(match.group(1))


def decode(data_uri: str) -> bytes:
    header, _, payload = data_uri.partition(",")
    assert header.endswith(";base64"), header[:80]
    return base64.b64decode(payload)


@pytest.mark.slow
def test_report_renders_offline_with_every_figure(micro_workflow_run, tmp_path):
    workdir, run = micro_workflow_run
    assert run.returncode == 0, run.stderr[-3000:]
    report_path = workdir / "results" / "report.html"
    report = report_path.read_text(encoding="utf-8")
    assert not EXTERNAL_RESOURCE.search(report), EXTERNAL_RESOURCE.search(report).group(0)

    results = embedded_results(report)
    galleries = sorted(str(p.relative_to(workdir)) for p in (workdir / "results" / "figures").rglob("*.png"))
    assert len(galleries) == 16  # 2 networks x 4 runs x (val, unlabelled)
    expected = ["results/tables/micro.html", "results/plots/micro.png", "results/plots/micro_training.png", *galleries]
    assert sorted(results) == sorted(expected)
    for path, entry in results.items():
        assert entry["caption"].strip(), f"{path} has no caption"
        assert decode(entry["data_uri"]) == (workdir / path).read_bytes(), f"{path} is not embedded as written"
    assert "<table>" in decode(results["results/tables/micro.html"]["data_uri"]).decode()
    assert "precision and recall against the hidden labels" in results["results/plots/micro_training.png"]["caption"]

    curves = pd.read_csv(workdir / "results" / "plots" / "micro_training.csv")
    supervised = curves["run"].str.contains(" supervised ")  # "<network> <method> <percent>% fold <fold>"
    assert curves.loc[~supervised, "pseudo_label_recall"].notna().any()  # measured against the hidden labels
    assert curves.loc[supervised, "pseudo_label_recall"].isna().all()
    assert len([p for p in (workdir / "results" / "tensorboard" / "micro").iterdir() if p.is_dir()]) == 8

    landing = tmp_path / "landing.png"
    chromium(report_path, tmp_path, f"--screenshot={landing}")
    dom = chromium(report_path, tmp_path, "--dump-dom").stdout
    for category in ("Galleries", "Plots", "Tables"):
        assert f">{category}<" in dom, f"category {category} not rendered"
    assert not EXTERNAL_RESOURCE.search(dom)

    # Open a gallery and the training curves as a reader would, and check the browser decoded each one whole.
    for name, path, category in (("gallery", galleries[0], "Galleries"),
                                 ("curves", "results/plots/micro_training.png", "Plots")):
        page = tmp_path / f"{name}.html"
        head, body_end, tail = report.rpartition("</body>")
        page.write_text(head + SHOW_RESULT % (json.dumps(path), json.dumps(category)) + body_end + tail, encoding="utf-8")
        dom = chromium(page, tmp_path, "--dump-dom").stdout
        shown = re.search(r'data-shown="([^"]*)"', dom)
        with Image.open(workdir / path) as image:
            assert shown and shown.group(1) == f"{image.width}x{image.height}", (path, shown and shown.group(1))
        screenshot = tmp_path / f"{name}.png"
        chromium(page, tmp_path, f"--screenshot={screenshot}")
        with Image.open(io.BytesIO(screenshot.read_bytes())) as image:
            assert image.size == (1400, 1000)
            assert len(image.convert("RGB").getcolors(1 << 24)) > 1000  # a photo-like gallery, not a blank page
