"""A page as a person sees it: Debian's headless Chromium loads it, takes a screenshot, and reports what the
page logged to its console and which web addresses it asked for (from Chromium's net log).

``.ci/run`` installs the ``chromium`` package; where it is missing the tests skip, saying how to get it."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

# what Chromium itself calls, whatever the page: not the page's references
BROWSER_HOSTS = ("clients2.google.com", "accounts.google.com", "android.clients.google.com", "www.google.com",
                 "redirector.gvt1.com", "update.googleapis.com", "safebrowsing.googleapis.com")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-default-apps",
         "--disable-extensions", "--enable-logging=stderr", "--v=0"]


@dataclass
class Visit:
    screenshot: Path
    console: list[str]  # the page's console messages (errors and uncaught exceptions among them)
    requested: list[str]  # http(s) addresses the page asked for, other than the given local server


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("headless Chromium is not installed (Debian: apt-get install chromium; .ci/run does it)")
    return exe


def visit(url: str, folder: Path, local: str = "127.0.0.1", size=(1100, 900), budget_ms: int = 4000) -> Visit:
    folder.mkdir(parents=True, exist_ok=True)
    shot, net = folder / "screenshot.png", folder / "net.json"
    p = subprocess.run([chromium(), *FLAGS, f"--window-size={size[0]},{size[1]}", f"--screenshot={shot}",
                        f"--log-net-log={net}", f"--virtual-time-budget={budget_ms}", url],
                       capture_output=True, text=True, timeout=120)
    assert shot.is_file(), p.stderr[-2000:]
    console = [line.split("CONSOLE", 1)[1] for line in p.stderr.splitlines() if ":CONSOLE" in line]
    urls = set(re.findall(r'"url":"(https?://[^"]+)"', net.read_text(errors="replace"))) if net.is_file() else set()
    requested = sorted(u for u in urls if not re.match(rf"https?://{re.escape(local)}(:\d+)?/", u)
                       and u.split("/")[2].split(":")[0] not in BROWSER_HOSTS)
    return Visit(shot, console, requested)


def assert_looks_right(v: Visit) -> None:
    """Not blank, nothing logged to the console, nothing fetched from the network."""
    from PIL import Image, ImageStat

    img = Image.open(v.screenshot).convert("L")
    stat = ImageStat.Stat(img)
    assert stat.stddev[0] > 5, f"{v.screenshot}: the page looks blank (pixel std {stat.stddev[0]:.1f})"
    dark = sum(img.histogram()[:128]) / (img.width * img.height)
    assert dark > 0.005, f"{v.screenshot}: almost no text or drawing on the page ({dark:.4f} dark pixels)"
    assert not v.console, f"the page logged to its console: {v.console[:3]}"
    assert not v.requested, f"the page asked the network for {v.requested[:3]}"


def dump(v: Visit) -> str:
    return json.dumps({"screenshot": str(v.screenshot), "console": v.console, "requested": v.requested})
