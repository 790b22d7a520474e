"""The report in a real browser: headless Chromium (Debian's ``chromium``) opens a page
built from real and hand-written run folders; every picture must load, nothing may be
reported on the console, and a screenshot is kept in tests/artifacts/ for people to see.

The page's Content-Security-Policy lets it load embedded pictures and its own style and
nothing else, so a picture or style that needed the network would fail here. The check
is a small script the test adds to its copy of the page (allowed by a nonce added to the
policy); it writes its findings into the DOM, which ``--dump-dom`` prints.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fusynth.report import write_report
from tests.report.folders import (
    classification_eval,
    published_model,
    seg_experiment,
    segmentation_eval,
    training_run,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
NONCE = "fusynth-browser-check"

pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no chromium binary (Debian: apt-get install chromium; .ci/run installs it)",
)

#: Runs first in the page: records errors of any kind, then on load checks every picture.
CHECK = """
<script nonce="NONCE">
(function () {
  var errors = [];
  window.addEventListener("error", function (e) {
    var t = e.target;
    errors.push(t && t.tagName ? "failed to load " + t.tagName + " " + (t.alt || "") : String(e.message));
  }, true);
  window.addEventListener("securitypolicyviolation", function (e) {
    errors.push("blocked by the page's policy: " + e.blockedURI);
  });
  ["error", "warn"].forEach(function (level) {
    var original = console[level];
    console[level] = function () {
      errors.push("console." + level + ": " + Array.prototype.join.call(arguments, " "));
      original.apply(console, arguments);
    };
  });
  window.addEventListener("load", function () {
    var images = Array.prototype.slice.call(document.images);
    var out = document.createElement("pre");
    out.id = "NONCE";
    out.textContent = JSON.stringify({
      images: images.length,
      broken: images.filter(function (i) { return !i.complete || i.naturalWidth === 0; })
                    .map(function (i) { return i.alt; }),
      errors: errors,
      height: document.documentElement.scrollHeight
    });
    document.body.appendChild(out);
  });
})();
</script>
""".replace("NONCE", NONCE)


def _instrument(page: str) -> str:
    """The page with the check script first in <head>, allowed by a nonce."""
    policy = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"
    assert policy in page, "the report's Content-Security-Policy changed"
    page = page.replace(policy, f"{policy}; script-src 'nonce-{NONCE}'")
    return page.replace("<head>", "<head>" + CHECK, 1)


def _chromium(url: str, profile: Path, *flags: str) -> subprocess.CompletedProcess:
    argv = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    argv += [f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0"]
    # nothing outside the page may be fetched: any host name fails to resolve
    argv += ["--host-resolver-rules=MAP * ~NOTFOUND", "--virtual-time-budget=10000"]
    return subprocess.run([*argv, *flags, url], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def page(real_runs, tmp_path_factory):
    """A report of every kind the tests can make, instrumented; its path."""
    root = tmp_path_factory.mktemp("browser")
    runs = [*real_runs.values()]
    runs += [segmentation_eval(root / "sam_eval", model_type="tiny")]
    runs += [classification_eval(root / "classifier_eval"), training_run(root / "sam", "sam")]
    runs += [seg_experiment(root / "seg_augment"), published_model(root / "publish" / "lora")]
    report = root / "report.html"
    write_report(runs, report, title="fusynth report: browser test")
    checked = root / "checked.html"
    checked.write_text(_instrument(report.read_text()))
    return checked


def _check(page: Path, profile: Path) -> tuple[dict, list[str]]:
    """What the check script found in ``page``, and the browser's console lines."""
    done = _chromium(page.as_uri(), profile, "--dump-dom")
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(rf'<pre id="{NONCE}">(.*?)</pre>', done.stdout, re.S)
    assert found, f"the check did not run (no result in the DOM): {done.stderr[-2000:]}"
    text = found.group(1).replace("&quot;", '"').replace("&lt;", "<").replace("&gt;", ">")
    console = [line for line in done.stderr.splitlines() if ":CONSOLE" in line]
    return json.loads(text.replace("&amp;", "&")), console


def test_the_check_catches_broken_and_outside_pictures(page, tmp_path):
    bad = tmp_path / "bad.html"
    extra = '<img alt="broken" src="data:image/png;base64,AAAA">'
    extra += '<img alt="outside" src="https://example.com/x.png">'
    bad.write_text(page.read_text().replace("<main>", "<main>" + extra, 1))
    result, _ = _check(bad, tmp_path / "profile")
    assert sorted(result["broken"]) == ["broken", "outside"]
    assert any("outside" in e or "example.com" in e for e in result["errors"])


def test_every_picture_loads_and_nothing_is_reported(page, tmp_path):
    result, console = _check(page, tmp_path / "profile")
    assert result["images"] >= 20
    assert result["broken"] == []
    assert result["errors"] == []
    # the page has no script of its own: any console line comes from the browser
    assert console == []


def test_screenshot_is_kept_as_an_artifact(page, tmp_path):
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "report_browser.png"
    shot.unlink(missing_ok=True)
    done = _chromium(
        page.as_uri(), tmp_path / "profile", "--window-size=1280,2400", f"--screenshot={shot}"
    )
    assert done.returncode == 0, done.stderr[-2000:]
    shutil.copy(page, ARTIFACTS / "report_browser.html")
    with Image.open(shot) as im:
        assert im.size == (1280, 2400)
        pixels = np.asarray(im.convert("L"), dtype=float)
    # a rendered page, not a blank or error screen: text, tables and pictures vary
    assert pixels.std() > 20
