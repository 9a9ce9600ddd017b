"""The report as a person sees it: headless Chromium renders report.html; every image loads, the headline shows.

Needs Debian's `chromium` (`.ci/run` installs it when it can); without a browser the test is skipped and
says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from test_report import metrics

from tasks.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--virtual-time-budget=10000", "--hide-scrollbars"]
PROBE = """<script>window.addEventListener('load', () => {
  const images = [...document.images].map(i => (i.complete && i.naturalWidth > 0) ? 'ok' : 'broken');
  document.body.setAttribute('data-images', images.join(','));
});</script>"""


@pytest.mark.skipif(CHROMIUM is None, reason="no headless Chromium here (apt-get install chromium)")
def test_report_renders_with_every_image_and_the_headline(tmp_path):
    page = write_report(metrics(), tmp_path / "report", "r", {"seed": 42}, {})["html"]
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([CHROMIUM, *FLAGS, *profile, "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=180).stdout
    assert 'data-images="ok,ok,ok"' in dom
    assert "For users with no history, hybrid" in dom
    shot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *FLAGS, *profile, "--window-size=1200,2400", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=180)
    assert shot.exists() and shot.stat().st_size > 20_000  # a rendered page, not a blank one
    if target := os.environ.get("RECSYS_REPORT_SCREENSHOT"):  # to look at it: RECSYS_REPORT_SCREENSHOT=/tmp/r.png
        shutil.copy(shot, target)
