"""The HTML report in headless Chromium: sections render, plots draw, no request leaves.

Chromium comes from Debian's package (`make browser-deps`, run by `make test`); without it
these tests are skipped with a clear reason. Every network request the page could make is
routed to a local proxy that counts connections: the test asserts it saw none.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest

from cohortctl.cli import main

ROOT = Path(__file__).resolve().parents[1]
BREAST = ROOT / "sample_data" / "breast_tcga"
LAML = ROOT / "sample_data" / "laml_tcga"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

pytestmark = [pytest.mark.browser, pytest.mark.slow,
              pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed "
                                 "(apt-get install chromium, or make browser-deps)")]

SECTIONS = ("cohort", "groups", "clinical", "markers", "methods")


# Chromium's own background services (updates, time, accounts): they call out even for a
# blank page, so they are told apart from requests made by the report itself.
BROWSER_HOSTS = ("google.com", "googleapis.com", "gvt1.com", "gstatic.com",
                 "googleusercontent.com")


class CountingProxy:
    """A TCP listener that records the request line of every connection (answers nothing)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.requests: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            conn.settimeout(1.0)
            try:
                line = conn.recv(512).split(b"\r\n", 1)[0].decode("latin-1")
            except OSError:
                line = "?"
            self.requests.append(line)
            conn.close()

    def page_requests(self) -> list[str]:
        """Requests not explained by the browser's own background services."""
        out = []
        for line in self.requests:
            parts = line.split()
            target = parts[1] if len(parts) > 1 else line
            host = target.split("://")[-1].split("/")[0].split(":")[0]
            if not host.endswith(BROWSER_HOSTS):
                out.append(line)
        return out

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        self.sock.close()


def _chromium(html: Path, tmp: Path, proxy: CountingProxy, *args: str) -> str:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           "--disable-default-apps", "--disable-extensions", "--metrics-recording-only",
           f"--user-data-dir={tmp / 'profile'}", f"--proxy-server=127.0.0.1:{proxy.port}",
           "--proxy-bypass-list=<-loopback>", "--virtual-time-budget=15000",
           "--window-size=1280,2400", *args, html.as_uri()]
    env = dict(os.environ, HOME=str(tmp))
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _report(tmp: Path, ingest_args: list[str]) -> Path:
    store = tmp / "store"
    assert main(["-q", "ingest", "-o", str(store), *ingest_args]) == 0
    assert main(["-q", "cluster", str(store), "--bootstrap", "10"]) == 0
    out = tmp / "report.html"
    assert main(["-q", "report", str(store), "-o", str(out)]) == 0
    return out


@pytest.mark.parametrize("cohort", ["breast", "laml"])
def test_report_renders_offline_in_chromium(tmp_path: Path, cohort: str) -> None:
    if cohort == "breast":
        args = ["--clinical", str(BREAST / "clinical.parquet"),
                "--molecular", f"mrna={BREAST / 'mrna_train.parquet'}",
                "--molecular", f"mirna={BREAST / 'mirna_train.parquet'}",
                "--molecular", f"protein={BREAST / 'protein_train.parquet'}",
                "--reference", "subtype"]
        sections = SECTIONS
    else:
        args = ["--clinical", str(LAML / "clinical.tsv"),
                "--genetic", str(LAML / "mutations.maf.gz")]
        sections = (*SECTIONS[:3], "survival", "mutations", "methods")
    html = _report(tmp_path, args)
    proxy = CountingProxy()
    try:
        dom = _chromium(html, tmp_path, proxy, "--dump-dom")
        shot = tmp_path / f"report-{cohort}.png"
        _chromium(html, tmp_path, proxy, f"--screenshot={shot}")
    finally:
        proxy.close()
    for key in sections:
        assert f'id="{key}"' in dom, key
    assert dom.count('class="plot-container') >= 2  # plotly drew the figures
    assert 'id="fig-embedding"' in dom
    assert shot.exists() and shot.stat().st_size > 10_000
    keep = ROOT / "out" / "screenshots"
    keep.mkdir(parents=True, exist_ok=True)
    shutil.copy(shot, keep / shot.name)
    assert proxy.page_requests() == [], "requests left the page"


def test_harness_detects_a_request_from_the_page(tmp_path: Path) -> None:
    """The no-request check can fail: a page that loads an image is caught."""
    page = tmp_path / "leaky.html"
    page.write_text('<html><body><img src="http://example.org/pixel.png"></body></html>')
    proxy = CountingProxy()
    try:
        _chromium(page, tmp_path, proxy, "--dump-dom")
    finally:
        proxy.close()
    assert any("example.org" in r for r in proxy.page_requests())
