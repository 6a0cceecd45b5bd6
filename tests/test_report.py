"""The HTML report rendered from stored metrics: two runs, a first run, failed and single variants, escaping,
missing test images, and the page opened in headless Chromium from disk with the network off."""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
import urllib.request
from html.parser import HTMLParser
from pathlib import Path

import markupsafe
import pytest

from reports.context import MISCLASSIFIED_SHOWN
from tl_tasks import config
from tl_tasks import demo as rf
from tl_tasks.layout import RunLayout
from tl_tasks.store import connect

XSS = "<script>alert(1)</script>"


@pytest.fixture
def store(tl_home):
    s = connect()
    yield s
    s.close()


class _Page(HTMLParser):
    """Tags, attributes and text of a page, as a browser's parser sees them (entities decoded)."""

    def __init__(self, text: str):
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, {k: v or "" for k, v in attrs}))

    def handle_data(self, data):
        self.text.append(data)

    def all(self, tag: str) -> list[dict]:
        return [a for t, a in self.tags if t == tag]

    @property
    def plain(self) -> str:
        return " ".join(" ".join(self.text).split())


def _build(store, run_id: str) -> tuple[str, _Page]:
    from reports import build_report

    path = build_report(run_id, store)
    assert path == RunLayout(run_id).report_index
    text = path.read_text(encoding="utf-8")
    return text, _Page(text)


def _assert_self_contained(text: str, page: _Page) -> None:
    assert not page.all("script"), "the report must not contain scripts"
    assert not page.all("link"), "no external stylesheets or fonts"
    for img in page.all("img"):
        assert img["src"].startswith("data:image/png;base64,"), img["src"][:60]
        assert img.get("alt"), "every image has alt text"
    assert "http://" not in text and "https://" not in text


def _link_target(page_path: Path, href: str) -> Path:
    assert not href.startswith(("/", "http:", "https:", "file:")), f"links must be relative: {href}"
    return (page_path.parent / href).resolve()


@pytest.mark.slow
def test_two_runs_show_deltas_trend_and_index(store, tl_home):
    first, second = "scheduled__2026-01-05T02:00:00+00:00", "scheduled__2026-01-12T02:00:00+00:00"
    rf.seed_run(store, first, rf.run_date(0), seed=1)
    rf.seed_run(store, second, rf.run_date(1), seed=2, accuracies={"cnn": 0.40, "resnet50_v4": 0.995})
    _build(store, first)
    text, page = _build(store, second)
    _assert_self_contained(text, page)
    plain = page.plain

    # Headline names the best variant and the regression.
    assert "Best variant: resnet50_v4" in plain
    assert "Regressed against the champion (confidently worse beyond the tolerance): cnn (−" in plain
    assert re.search(r"cnn \(−\d+\.\d pts, 95% CI −\d+\.\d to −\d+\.\d pts; p < 0.0001\)", plain), plain[:3000]
    # every accuracy carries its interval; the lineage and its size are stated
    assert plain.count("95% CI") >= 10
    assert "Lineage abababababab" in plain and "1 earlier run shares it" in plain
    # Summary table: every variant, metrics, and up/down marks against the previous run and the champion.
    summary = text[text.index('id="summary"'):text.index('id="trend"')]
    for v in rf.VARIANT_NAMES:
        assert f"<strong>{v}</strong>" in summary
    assert re.search(r'class="delta up good"[^>]*>▲ \+', summary), "an improvement is marked up in green"
    assert re.search(r'class="delta down bad"[^>]*>▼ −', summary), "a drop is marked down in red"
    assert "champion " in summary and "vs champion: " in summary
    headers = [" ".join(h.split()) for h in re.findall(r"<th[^>]*>(.*?)</th>", summary.replace("<br>", " "))]
    for header in ("Test accuracy", "Loss", "Top-3", "Macro F1", "Epochs run", "Best epoch", "Train time",
                   "Inference img/s", "Weights", "Gate"):
        assert header in headers
    assert any(h.startswith("Parameters") for h in headers)
    assert '<span class="badge regressed">regressed</span>' in summary
    assert '<span class="badge promoted">promoted</span>' in summary
    # Trend over both runs, per-variant sections with curves, confusion matrix, per-class table, thumbnails.
    trend = [i for i in page.all("img") if i["alt"].startswith("Line chart: test accuracy")]
    assert len(trend) == 1 and "across 2 runs" in trend[0]["alt"]
    assert "shaded bands are the gate's intervals" in plain
    assert len([i for i in page.all("img") if i["alt"].startswith("Accuracy and loss per epoch")]) == 5
    assert text.count('<table class="confusion') == 5 and text.count('<table class="perclass">') == 5
    thumbs = [i for i in page.all("img") if i["alt"].startswith("test image")]
    assert 5 <= len(thumbs) <= 5 * MISCLASSIFIED_SHOWN
    # each variant's training speed: the median of its epochs' img/s, then each epoch's
    assert len(re.findall(r"Training speed [\d,]+ img/s median; per epoch: [\d,]+ \(compiling\), [\d,]+", plain)) == 5
    assert "Run metadata" in plain and "folder:/data/cifar-10-images-jpg.tar.gz" in plain
    assert "keras" in plain and "3.15.1" in plain and "CPU (2 cores)" in plain and "train cnn" in plain

    # Links: to the previous run's report, to the index; the index lists both runs, newest first.
    report_path = RunLayout(second).report_index
    hrefs = [a["href"] for a in page.all("a") if a.get("href") and not a["href"].startswith("#")]
    targets = {_link_target(report_path, h) for h in hrefs}
    assert RunLayout(first).report_index.resolve() in targets
    index_path = (tl_home / "reports" / "index.html").resolve()
    assert index_path in targets and index_path.is_file()
    index_text = index_path.read_text(encoding="utf-8")
    index = _Page(index_text)
    _assert_self_contained(index_text, index)
    links = [a["href"] for a in index.all("a")]
    assert [_link_target(index_path, h) for h in links] == [
        (RunLayout(second).report_index).resolve(), RunLayout(first).report_index.resolve()]
    assert index.plain.index(second) < index.plain.index(first)
    assert 'class="delta down bad"' in index_text and 'class="delta up good"' in index_text


def test_first_run_renders_without_history(store):
    run_id = "manual__first"
    rf.seed_run(store, run_id, rf.run_date(0))
    text, page = _build(store, run_id)
    _assert_self_contained(text, page)
    assert "First run on this test set (lineage): there is no earlier run to compare with yet." in page.plain
    assert 'class="delta' not in text, "nothing to compare with on a first run"
    assert "Only this run on this test set so far" in page.plain
    assert text.count('<span class="badge bootstrap">bootstrap</span>') >= 5


def test_failed_variants_and_single_variant(store):
    error = "Traceback (most recent call last):\n  File \"train.py\", line 1\nResourceExhaustedError: OOM <when> allocating & more"
    rf.seed_run(store, "run-a", rf.run_date(0), seed=1)
    rf.seed_run(store, "run-b", rf.run_date(1), seed=2,
                failed={"resnet50_v2": ("train", error), "resnet50_v3": ("evaluate", "ValueError: bad input")})
    text, page = _build(store, "run-b")
    _assert_self_contained(text, page)
    plain = page.plain
    assert "2 variants failed: resnet50_v2 (in train), resnet50_v3 (in evaluate)." in plain
    failed = text[text.index('id="failed"'):text.index('id="metadata"')]
    assert str(markupsafe.escape(error)) in failed
    assert "ValueError: bad input" in failed
    assert '<tr class="failed">' in text
    # the variant that failed in evaluate still shows its training curves; the one that failed in train has none
    curves = [i["alt"] for i in page.all("img") if i["alt"].startswith("Accuracy and loss")]
    assert any("resnet50_v3" in a for a in curves) and not any("resnet50_v2" in a for a in curves)

    # A run refused before any variant ran (bad trigger parameters): the report says why.
    store.upsert_run("run-refused", logical_date=rf.run_date(2), state="failed", params={"epochs": "ten"},
                     error="invalid parameters: epochs='ten' is not a whole number")
    text, page = _build(store, "run-refused")
    _assert_self_contained(text, page)
    assert "No variant results are recorded for this run." in page.plain
    assert "The run failed: invalid parameters: epochs='ten' is not a whole number" in page.plain
    assert "No test accuracy is recorded yet" in page.plain

    rf.seed_run(store, "run-single", rf.run_date(3), variants=("cnn",), seed=3)
    text, page = _build(store, "run-single")
    _assert_self_contained(text, page)
    assert "Best variant: cnn" in page.plain
    assert text.count('<table class="confusion') == 1


def test_user_and_data_strings_are_escaped(store):
    run_id = f"manual__{XSS}"
    classes = (XSS, 'quote" onmouseover="alert(2)', "$\\frac{$dollar", "cat & dog", "<img src=x onerror=alert(3)>")
    rf.seed_run(store, "before", rf.run_date(0), class_names=classes, variants=("cnn", "resnet50_v1"))
    rf.seed_run(store, run_id, rf.run_date(1), class_names=classes, variants=("cnn", "resnet50_v1"),
                params={"note": XSS, "tags": [XSS]}, failed={"resnet50_v1": ("train", f"boom {XSS}")})
    text, page = _build(store, run_id)
    _assert_self_contained(text, page)
    assert XSS not in text and "<img src=x" not in text and 'onmouseover="alert' not in text
    assert not any(k.startswith("on") for _, attrs in page.tags for k in attrs), "no event handler attributes"
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    plain = page.plain
    assert XSS in plain and "cat & dog" in plain and "$\\frac{$dollar" in plain  # shown as text
    assert f"boom {XSS}" in plain
    alts = [i["alt"] for i in page.all("img") if i["alt"].startswith("test image")]
    assert alts and any(XSS in a for a in alts), "class names appear, escaped, in alt attributes"
    titles = [a.get("title", "") for _, a in page.tags]
    assert any('quote" onmouseover="alert(2)' in t for t in titles)
    index = (config.tl_home() / "reports" / "index.html").read_text(encoding="utf-8")
    assert XSS not in index and "&lt;script&gt;" in index


def test_plot_text_from_data_is_not_mathtext():
    from reports import plots

    history = rf.fake_history(3, 0.7, __import__("numpy").random.default_rng(0))
    name = "v$\\frac{$1"  # broken mathtext: drawing fails if the `$` were parsed
    for fig in (plots.training_curves(history, name, 2),
                plots.accuracy_trend({name: [{"logical_date": rf.run_date(0), "accuracy": 0.5}]}, rf.run_date(0))):
        assert plots.figure_to_data_uri(fig).startswith("data:image/png;base64,")
        texts = [t for ax in fig.axes for t in [ax.title, *ax.texts]
                 + ([*ax.get_legend().get_texts()] if ax.get_legend() else [])]
        assert any(name in t.get_text().replace("\\$", "$") for t in texts)


def test_missing_test_images_are_reported_not_fatal(store):
    rf.seed_run(store, "run-x", rf.run_date(0))
    RunLayout("run-x").data_file("x_test").unlink()
    _, page = _build(store, "run-x")
    assert "The test images are no longer on disk" in page.plain
    assert not [i for i in page.all("img") if i["alt"].startswith("test image")]


def test_unknown_run_is_a_clear_error(store):
    from reports import build_report

    with pytest.raises(ValueError, match="run_id='nope' is not in the metrics database"):
        build_report("nope", store)


def test_index_lists_runs_without_reports_and_empty_history(store, tl_home):
    from reports import build_index

    page = _Page(build_index(store).read_text(encoding="utf-8"))
    assert "No runs recorded yet" in page.plain
    rf.seed_run(store, "no-report-yet", rf.run_date(0), variants=("cnn",), write_data=False)
    page = _Page(build_index(store).read_text(encoding="utf-8"))
    assert "no-report-yet (no report yet)" in page.plain and not page.all("a")


# --------------------------------------------------------------------------- a real browser

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--disable-default-apps", "--mute-audio",
                  # network off: no DNS, and every connection goes to a closed local port
                  "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9",
                  "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0"]


class _DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws_url: str):
        from websockets.sync.client import connect as ws_connect

        self.ws = ws_connect(ws_url, max_size=None, open_timeout=20)
        self.next_id = 0
        self.events: list[dict] = []

    def call(self, method: str, timeout: float = 30, **params) -> dict:
        self.next_id += 1
        self.ws.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        deadline = time.monotonic() + timeout
        while True:
            msg = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            if msg.get("id") == self.next_id:
                if "error" in msg:
                    raise AssertionError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self.events.append(msg)

    def wait_for(self, event: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        for msg in self.events:
            if msg.get("method") == event:
                return msg
        while True:
            msg = json.loads(self.ws.recv(timeout=max(deadline - time.monotonic(), 0.1)))
            self.events.append(msg)
            if msg.get("method") == event:
                return msg

    def close(self) -> None:
        self.ws.close()


def _open_devtools(chromium: str, tmp_path: Path) -> tuple[subprocess.Popen, _DevTools]:
    profile = tmp_path / "chromium-profile"
    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--window-size=1300,900",
                             "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 60
    while not (port_file.is_file() and port_file.read_text().strip()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"Chromium did not start its DevTools endpoint: {proc.stderr.read()[-2000:]}")
        time.sleep(0.1)
    port = int(port_file.read_text().split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=20) as response:
        pages = [t for t in json.load(response) if t.get("type") == "page"]
    return proc, _DevTools(pages[0]["webSocketDebuggerUrl"])


@pytest.mark.browser
def test_report_in_headless_chromium(store, tmp_path, chromium):
    rf.seed_run(store, "browser-a", rf.run_date(0), seed=1)
    rf.seed_run(store, f"browser-b{XSS}", rf.run_date(1), seed=2, failed={"resnet50_v2": ("train", f"OOM {XSS}")})
    from reports import build_report

    report = build_report(f"browser-b{XSS}", store)
    proc, dt = _open_devtools(chromium, tmp_path)
    try:
        for domain in ("Page", "Runtime", "Log", "Network"):
            dt.call(f"{domain}.enable")
        dt.call("Network.emulateNetworkConditions", offline=True, latency=0, downloadThroughput=-1,
                uploadThroughput=-1)
        dt.call("Page.navigate", url=report.as_uri())
        dt.wait_for("Page.loadEventFired", timeout=60)
        result = dt.call("Runtime.evaluate", returnByValue=True, expression="""JSON.stringify({
            images: Array.from(document.images).map(i => ({complete: i.complete, width: i.naturalWidth, alt: i.alt})),
            scripts: document.scripts.length, title: document.title, height: document.documentElement.scrollHeight})""")
        info = json.loads(result["result"]["value"])
        shot = dt.call("Page.captureScreenshot", format="png", captureBeyondViewport=True,
                       clip={"x": 0, "y": 0, "width": 1300, "height": min(info["height"], 6000), "scale": 1})
        dt.call("Runtime.evaluate", expression="0")  # flush pending console/log events
    finally:
        dt.close()
        proc.kill()
        proc.wait(timeout=30)

    errors = [e for e in dt.events if e.get("method") == "Runtime.exceptionThrown"
              or (e.get("method") == "Runtime.consoleAPICalled" and e["params"]["type"] in ("error", "assert"))
              or (e.get("method") == "Log.entryAdded" and e["params"]["entry"]["level"] == "error")]
    assert not errors, f"console errors: {errors}"
    requests = [e["params"]["request"]["url"] for e in dt.events if e.get("method") == "Network.requestWillBeSent"]
    assert all(u.startswith(("file:", "data:")) for u in requests), f"network requests: {requests}"
    assert not [e for e in dt.events if e.get("method") == "Network.loadingFailed"]
    assert info["scripts"] == 0
    assert XSS in info["title"], "the run id is shown as text in the title"
    assert len(info["images"]) >= 1 + 4 + 4 * 20, info["images"][:3]  # trend, curves, thumbnails
    broken = [i for i in info["images"] if not i["complete"] or i["width"] <= 0]
    assert not broken, f"images not rendered: {broken[:5]}"
    png = base64.b64decode(shot["data"])
    (tmp_path / "report.png").write_bytes(png)
    assert png.startswith(b"\x89PNG") and len(png) > 50_000
    if out := os.environ.get("TL_TEST_SCREENSHOT"):
        Path(out).write_bytes(png)


# --------------------------------------------------------------------------- the paginated index


def _index_pages(folder: Path) -> dict[str, str]:
    """Every index page's HTML without its "Generated <time>" footer, by file name."""
    return {p.name: re.sub(r"Generated [^<]* by", "Generated by", p.read_text(encoding="utf-8"))
            for p in sorted(folder.glob("*.html"))}


def _page_runs(page: _Page, ids: list[str]) -> list[str]:
    return [r for r in sorted(ids, key=page.plain.find) if r in page.plain]


def test_index_is_paginated_newest_first_and_rebuilds_only_what_changed(store, tl_home, monkeypatch):
    from reports import build_index, index

    monkeypatch.setattr(index, "INDEX_PAGE_SIZE", 3)
    ids = [f"run-{i:02d}" for i in range(8)]
    for i, run_id in enumerate(ids):
        store.upsert_run(run_id, logical_date=rf.run_date(i), state="success")
    front = build_index(store)
    folder = tl_home / "reports"
    assert sorted(p.name for p in folder.glob("page-*.html")) == ["page-1.html", "page-2.html", "page-3.html"]
    pages = {p.name: _Page(p.read_text(encoding="utf-8")) for p in folder.glob("*.html")}
    for name, page in pages.items():
        _assert_self_contained((folder / name).read_text(encoding="utf-8"), page)
        for a in page.all("a"):
            assert _link_target(folder / name, a["href"]).is_file(), (name, a["href"])
    # newest first on every page; each run on exactly one archive page; page 1 holds the oldest
    assert _page_runs(pages["index.html"], ids) == ["run-07", "run-06", "run-05"]
    assert _page_runs(pages["page-3.html"], ids) == ["run-07", "run-06"]
    assert _page_runs(pages["page-2.html"], ids) == ["run-05", "run-04", "run-03"]
    assert _page_runs(pages["page-1.html"], ids) == ["run-02", "run-01", "run-00"]
    hrefs = {name: [a["href"] for a in page.all("a")] for name, page in pages.items()}
    assert hrefs["page-3.html"][:3] == ["index.html", "index.html", "page-2.html"]  # newest, newer, older
    assert "page-3.html" in hrefs["page-2.html"] and "page-1.html" in hrefs["index.html"]

    # A new run: the incremental build equals a full rebuild (a new page 3 link on page 2 included).
    for run_id, day in (("run-08", 8), ("run-09", 9)):
        store.upsert_run(run_id, logical_date=rf.run_date(day), state="success")
        build_index(store, run_id=run_id)
        incremental = _index_pages(folder)
        build_index(store, full=True)
        assert incremental == _index_pages(folder), run_id
    assert (folder / "page-4.html").is_file()
    # A backfilled (older) run shifts every page after it; a deletion too.
    store.upsert_run("run-early", logical_date=rf.run_date(-1), state="success")
    build_index(store, run_id="run-early")
    incremental = _index_pages(folder)
    assert "run-early" in incremental["page-1.html"]
    build_index(store, full=True)
    assert incremental == _index_pages(folder)
    store.delete_run("run-early")
    store.delete_run("run-09")
    build_index(store)
    incremental = _index_pages(folder)
    assert "run-early" not in "".join(incremental.values()) and "page-4.html" not in incremental
    build_index(store, full=True)
    assert incremental == _index_pages(folder)
    assert front == folder / "index.html"


def test_trend_summarises_history_older_than_the_chart(store, monkeypatch):
    import reports.context as context

    monkeypatch.setattr(context, "TREND_LIMIT", 3)
    ids = [f"scheduled__w{i}" for i in range(6)]
    for i, run_id in enumerate(ids):
        rf.seed_run(store, run_id, rf.run_date(i), seed=i, variants=("cnn",), write_data=i == 5)
    _, page = _build(store, ids[-1])
    assert "The chart draws the last 3 runs; older history on this test set: cnn: 3 earlier runs from" in page.plain
