"""The privacy report as a person sees it: rendered by headless Chromium (slow).

Debian's ``chromium`` package (``apt-get install -y chromium``) is needed; without it the
test is skipped and says so.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("no Chromium to render the page: apt-get install -y chromium (Debian)")


def screenshot(page: os.PathLike, png: os.PathLike, width: int = 1200, height: int = 4200) -> None:
    """Render ``page`` headless into ``png`` (``--no-sandbox``: CI runs as root)."""
    command = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        f"--window-size={width},{height}",
        f"--screenshot={os.fspath(png)}",
        f"file://{os.fspath(page)}",
    ]
    subprocess.run(command, check=True, capture_output=True, timeout=120)


def test_the_report_of_a_real_run_renders_in_chromium(tmp_path):
    from keras_privacy.datasets import FASHION_MNIST_DIR
    from keras_privacy.tutorials import privacy_report

    if not FASHION_MNIST_DIR.exists():
        pytest.skip("dataset-fashion-mnist is not installed")
    _chromium()
    argv = ["--report-dir", str(tmp_path), "--train-examples", "3000", "--epochs", "2"]
    argv += ["--attack-examples", "1000", "--audit-canaries", "300", "--noise-seed", "0"]
    assert privacy_report.main(argv) == 0
    data = json.loads((tmp_path / "report.json").read_text(encoding="utf-8"))
    assert all(data["sections"].values()), data["sections"]

    import matplotlib.image

    shot = tmp_path / "screenshot.png"
    screenshot(tmp_path / "report.html", shot)
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (4200, 1200)
    # not blank: many distinct colours (text, the plots' lines), and the plots' colours
    colours = np.unique((pixels * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 500
    blue = (pixels[..., 2] > 0.5) & (pixels[..., 0] < 0.3)  # the PLD lines, the links
    orange = (pixels[..., 0] > 0.7) & (pixels[..., 2] < 0.3)  # RDP, the second attack
    assert blue.mean() > 1e-3 and orange.mean() > 1e-4
    # Chromium decoded every embedded figure (a broken image has naturalWidth 0): a copy
    # of the page writes each image's width into the DOM that Chromium dumps
    probe = tmp_path / "probe.html"
    script = (
        "<script>window.onload = () => { document.body.setAttribute('data-widths', "
        "[...document.images].map(i => i.naturalWidth).join(',')); };</script>"
    )
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    probe.write_text(page.replace("</body>", script + "</body>"), encoding="utf-8")
    dom = subprocess.run(
        [
            _chromium(),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--dump-dom",
            f"file://{probe}",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    ).stdout
    widths = [int(w) for w in dom.split('data-widths="', 1)[1].split('"', 1)[0].split(",")]
    assert len(widths) == 5 and min(widths) > 300, widths
