"""The HTML report in headless Chromium: sections render, plots draw, no request leaves.

Chromium comes from Debian's package (`make browser-deps`, run by `make test`); without it
these tests are skipped with a clear reason. Every network request the page could make is
routed to a local proxy that counts connections: the test asserts it saw none.
"""

from __future__ import annotations

import json
import os
import re
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
#: Ingest arguments of the demo (TCGA breast) and of the README tour (TCGA AML).
BREAST_ARGS = ["--clinical", str(BREAST / "clinical.parquet"),
               "--molecular", f"mrna={BREAST / 'mrna_train.parquet'}",
               "--molecular", f"mirna={BREAST / 'mirna_train.parquet'}",
               "--molecular", f"protein={BREAST / 'protein_train.parquet'}",
               "--reference", "subtype"]
LAML_ARGS = ["--clinical", str(LAML / "clinical.tsv"), "--genetic", str(LAML / "mutations.maf.gz")]


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
        args = BREAST_ARGS
        sections = SECTIONS
    else:
        args = LAML_ARGS
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


# -- completeness: every figure drawn, readable, at both widths ------------------------------

#: Injected into a copy of the report (never into the report itself): records console errors
#: from the start, then, once Plotly has drawn, measures every figure and section and writes
#: the result into the DOM as JSON (read back with --dump-dom).
AUDIT_JS = r"""
<script>
(function () {
  var errors = [];
  var original = console.error;
  console.error = function () {
    errors.push(Array.prototype.join.call(arguments, " "));
    original.apply(console, arguments);
  };
  window.addEventListener("error", function (e) { errors.push("uncaught: " + e.message); });
  function boxes(root, test) {
    return Array.prototype.filter.call(root.querySelectorAll("text, rect"), test)
      .map(function (n) { var b = n.getBoundingClientRect();
                          return [b.left, b.top, b.right, b.bottom, n.textContent || ""]; })
      .filter(function (b) { return b[2] - b[0] > 1 && b[3] - b[1] > 1; });
  }
  window.addEventListener("load", function () {
    setTimeout(function () {
      var out = {errors: errors, width: window.innerWidth,
                 figures: [], sections: [], tables: []};
      document.querySelectorAll(".fig").forEach(function (el) {
        var r = el.getBoundingClientRect();
        var points = 0;
        (el.data || []).forEach(function (t) {
          ["x", "y", "z"].forEach(function (k) {
            var v = t[k];
            if (!Array.isArray(v)) return;
            points = Math.max(points, v.reduce(function (n, row) {
              return n + (Array.isArray(row) ? row.length : 1); }, 0));
          });
        });
        out.figures.push({
          name: el.getAttribute("data-figure"), height: r.height, width: r.width,
          traces: (el.data || []).length, points: points,
          legend: boxes(el, function (n) { return n.matches(".legend rect.bg"); }),
          titles: boxes(el, function (n) {
            return /^[xy][0-9]*title$/.test(n.getAttribute("class") || ""); }),
          overflow: el.scrollWidth > el.clientWidth + 2
        });
      });
      document.querySelectorAll("section").forEach(function (s) {
        out.sections.push({key: s.getAttribute("data-section"),
                           items: s.querySelectorAll("p:not(.note), table, .fig").length});
      });
      document.querySelectorAll(".tablewrap").forEach(function (w) {
        var r = w.getBoundingClientRect();
        out.tables.push({right: r.right, scrolls: w.scrollWidth > w.clientWidth});
      });
      // Sorting: click the first numeric header of a sortable table; record its values.
      var th = document.querySelector("table.sortable th.num");
      if (th) {
        var col = Array.prototype.indexOf.call(th.parentNode.children, th);
        th.click();
        out.sorted = {column: th.textContent, values: Array.prototype.map.call(
          th.closest("table").tBodies[0].rows, function (r) {
            return r.cells[col].textContent; })};
      }
      var node = document.createElement("script");
      node.type = "application/json";
      node.id = "cohortctl-audit";
      node.textContent = JSON.stringify(out);
      document.body.appendChild(node);
      if (window.parent !== window) window.parent.postMessage(node.textContent, "*");
    }, 4000);
  });
})();
</script>
"""


def _overlaps(a: list[float], b: list[float]) -> bool:
    return min(a[2], b[2]) - max(a[0], b[0]) > 1 and min(a[3], b[3]) - max(a[1], b[1]) > 1


def _audit(html: Path, tmp: Path, width: int) -> dict:
    """Load a copy of ``html`` with :data:`AUDIT_JS` at ``width`` px; return the audit and
    keep a screenshot in the test's temp dir. Headless Chromium's window is at least 500 px
    wide, so narrower widths load the copy in an iframe of that width (the audit is posted
    to the outer page)."""
    page = tmp / f"audit-{width}-{html.name}"
    page.write_text(html.read_text().replace("<head>", "<head>" + AUDIT_JS, 1))
    outer = page
    if width < 500:
        outer = tmp / f"frame-{width}-{html.name}"
        outer.write_text(
            '<html><body style="margin:0"><iframe src="' + page.name + '" style="width:'
            f'{width}px;height:6000px;border:0"></iframe><script>window.addEventListener('
            '"message", function (e) { var n = document.createElement("script");'
            ' n.type = "application/json"; n.id = "cohortctl-audit"; n.textContent = e.data;'
            ' document.body.appendChild(n); });</script></body></html>')
    proxy = CountingProxy()
    try:
        dom = _chromium(outer, tmp, proxy, "--dump-dom", f"--window-size={max(width, 500)},2400")
        _chromium(outer, tmp, proxy, f"--screenshot={tmp / (page.stem + '.png')}",
                  f"--window-size={max(width, 500)},6000")
    finally:
        proxy.close()
    m = re.search(r'<script type="application/json" id="cohortctl-audit">(.*?)</script>', dom,
                  re.S)
    assert m, "audit did not run (page script failed?)"
    audit = json.loads(m.group(1).replace("&lt;", "<").replace("&gt;", ">")
                       .replace("&amp;", "&"))
    assert audit["width"] == width, f"page laid out at {audit['width']} px, not {width}"
    return audit


def _simulated_args(tmp: Path) -> list[str]:
    sim = tmp / "sim"
    assert main(["-q", "simulate", "-o", str(sim), "--patients", "300", "--genes", "300",
                 "--mutation-genes", "40", "--treatments", "2", "--seed", "1"]) == 0
    return ["--clinical", str(sim / "clinical.parquet"),
            "--molecular", f"expression={sim / 'expression.parquet'}",
            "--genetic", f"mutations={sim / 'mutations.maf'}",
            "--treatment", "treatment", "--response", "response",
            "--time", "os_time", "--event", "os_event"]


@pytest.mark.parametrize("cohort", ["breast", "laml", "simulated"])
def test_every_figure_is_drawn_and_readable(tmp_path: Path, cohort: str) -> None:
    """The issue-16 bar: every section has content or a reason, every figure has data and
    at least 200 px height, no legend covers an axis title, no console error; at 390 px
    nothing is wider than the screen except tables that scroll."""
    if cohort == "breast":
        args = BREAST_ARGS
    elif cohort == "laml":
        args = LAML_ARGS
    else:
        args = _simulated_args(tmp_path)
    html = _report(tmp_path, args)
    for width in (1400, 390):
        audit = _audit(html, tmp_path, width)
        assert audit["errors"] == [], audit["errors"]
        for sec in audit["sections"]:
            assert sec["items"] > 0, f"section {sec['key']} is empty at {width} px"
        assert audit["figures"], "no figure in the report"
        for fig in audit["figures"]:
            where = f"{cohort} figure {fig['name']} at {width} px"
            assert fig["traces"] > 0 and fig["points"] > 0, f"{where}: no data"
            assert fig["height"] >= 200, f"{where}: {fig['height']:.0f} px high"
            assert not fig["overflow"], f"{where}: wider than its box"
            clashes = [(t[4], round(t[1])) for t in fig["titles"]
                       for leg in fig["legend"] if _overlaps(t, leg)]
            assert not clashes, f"{where}: legend covers axis title(s) {clashes}"
        if audit.get("sorted"):
            found = [re.match(r"[<>≤≥]?\s?(-?[\d,]+(?:\.\d+)?)", v.strip())
                     for v in audit["sorted"]["values"]]
            shown = [float(m.group(1).replace(",", "")) for m in found if m]
            assert shown == sorted(shown), audit["sorted"]
        if width == 390:
            for t in audit["tables"]:
                assert t["right"] <= 390 + 1, "a table box is wider than the screen"


def test_audit_catches_empty_figures_and_legend_clashes(tmp_path: Path) -> None:
    """The completeness audit can fail: a figure emptied of its data and a legend moved onto
    the x-axis title are both reported."""
    html = _report(tmp_path, ["--clinical", str(BREAST / "clinical.parquet"),
                              "--molecular", f"mrna={BREAST / 'mrna_train.parquet'}"])
    text = html.read_text()
    m = re.search(r"var FIGS = (\{.*?\});\n", text, re.S)
    assert m
    figs = json.loads(m.group(1))
    figs["selection"]["data"] = []
    for view in figs["embedding"]["embedding"]["views"].values():
        view["layout"]["legend"] = {"orientation": "h", "x": 0.3, "y": -0.08, "yanchor": "top"}
    broken = tmp_path / "broken.html"
    broken.write_text(text.replace(m.group(1), json.dumps(figs)))
    audit = {f["name"]: f for f in _audit(broken, tmp_path, 1400)["figures"]}
    assert audit["selection"]["points"] == 0
    emb = audit["embedding"]
    assert any(_overlaps(t, leg) for t in emb["titles"] for leg in emb["legend"])
