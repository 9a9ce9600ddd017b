"""The report as a person sees it: headless Chromium renders report.html; every image loads, the headline shows.

Needs Debian's `chromium` (`.ci/run` installs it when it can); without a browser the test is skipped and
says why.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from test_report import history, with_user_baselines

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
def test_report_renders_with_every_image_and_the_answer_first(tmp_path):
    nights = history([("2026-11-28", "published", 0.32, None),
                      ("2026-11-29", "rejected", 0.20, "hybrid ndcg@10 on warm: 0.2000 < 0.3200 - 10%")])
    page = write_report(with_user_baselines(), tmp_path / "report", "r", {"seed": 42}, {}, history=nights,
                        night="2026-11-30")["html"]
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", PROBE + "</body>"))
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([CHROMIUM, *FLAGS, *profile, "--dump-dom", probe.as_uri()], capture_output=True,
                         text=True, timeout=180).stdout
    assert 'data-images="ok,ok,ok,ok"' in dom  # the history plot and the three others load
    # What a person reads first: the published model's heading, then its table, before anything else.
    assert dom.index("Tonight (2026-11-30): hybrid, the published model") < dom.index("<table>")
    assert dom.index("<td>warm users (their next interactions)</td>") < dom.index("Nights over time")
    assert dom.index("Nights over time") < dom.index("For users with no history, hybrid")
    for name, size in (("first-screen", "1200,900"), ("page", "1200,3200")):
        shot = tmp_path / f"{name}.png"
        subprocess.run([CHROMIUM, *FLAGS, *profile, f"--window-size={size}", f"--screenshot={shot}", page.as_uri()],
                       capture_output=True, timeout=180)
        assert shot.exists() and shot.stat().st_size > 20_000  # a rendered page, not a blank one
        if target := os.environ.get("RECSYS_REPORT_SCREENSHOT"):  # to look: RECSYS_REPORT_SCREENSHOT=/tmp/r
            shutil.copy(shot, f"{target}-{name}.png")
