"""What a person waits for in the browser: a cold study page, and Run → the first chart point.

Part ``page``: a synthetic study of 200 runs × 5 000 steps × 5 metrics (5 M metric rows, as in
``bench_analytics.py``) is written into DuckDB, ``approximant up --workers 0`` serves it, and
real headless Chromium opens ``/study?study=<id>`` in a new browser context (empty cache, new
Streamlit session) again and again. Each load is timed from navigation start to the first
chart whose marks are drawn, and split into: the HTML and JavaScript bundle, the websocket,
the server's script run (from the first to the last message of the run, decoded from the
websocket frames), and what happens in the browser after the chart's message arrives (Vega).
The first load after the server starts is reported apart (``--first-loads`` server starts).
Each load also reports the CPU time of the page's main thread (Chromium's thread clock, from a
trace) and of the dashboard process (``/proc``), which another process's load on a shared
machine does not inflate as it does wall time.

Part ``run``: ``approximant up --workers 1`` with an idle worker; a digits study is submitted
from the browser form and timed from the Run click to the first point drawn in its chart,
split by the timestamps the stack leaves behind (the submission, the worker's claim and first
event on the stream, the recorder's commit, the page's refresh).

``--compare DIR`` serves the same data from another checkout too (e.g. a ``git worktree`` of
the commit before a change), loads alternating between them, and prints the ratios.

    python benchmarks/bench_browser.py [--part page|run|both] [--repeats 7] [--compare DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# Installed before any page script: timestamps (ms since navigation start, the page's clock) of
# every websocket message, of long tasks, and of the first chart marks drawn. A chart with few
# points is SVG (marks are elements), a larger one canvas (marks are draw calls).
PROBE_JS = """
(() => {
  const B = window.__bench = {ws: [], sent: [], marks: {}, longtasks: []};
  const mark = (name) => { if (!(name in B.marks)) B.marks[name] = performance.now(); };
  const Native = window.WebSocket;
  class Probed extends Native {
    constructor(...args) {
      super(...args);
      mark('ws_create');
      this.addEventListener('open', () => mark('ws_open'));
      this.addEventListener('message', (e) => {
        const d = e.data;
        B.ws.push([performance.now(), d.byteLength ?? d.size ?? d.length]);
      });
    }
    send(data) { B.sent.push(performance.now()); return super.send(data); }
  }
  window.WebSocket = Probed;
  try {
    new PerformanceObserver((l) => {
      for (const e of l.getEntries()) B.longtasks.push([e.startTime, e.duration]);
    }).observe({type: 'longtask', buffered: true});
  } catch (e) {}
  for (const name of ['fill', 'stroke', 'fillText']) {
    const f = CanvasRenderingContext2D.prototype[name];
    CanvasRenderingContext2D.prototype[name] = function (...a) {
      if (!('drawn' in B.marks) && this.canvas.closest && this.canvas.closest('.vega-embed')) {
        mark('drawn'); B.marks.renderer = 'canvas';
      }
      return f.apply(this, a);
    };
  }
  const check = () => {
    if (!('h1' in B.marks) && document.querySelector('h1')) mark('h1');
    if (!('embed' in B.marks) && document.querySelector('.vega-embed')) mark('embed');
    if (!('drawn' in B.marks) &&
        document.querySelector('.vega-embed svg g[class*="mark-"] path')) {
      mark('drawn'); B.marks.renderer = 'svg';
    }
  };
  new MutationObserver(check).observe(document, {childList: true, subtree: true});
})();
"""


def _launch(p):
    from bench_faults import chromium

    return chromium(p)


def _importable(tree: Path, tmp: Path) -> tuple[str, Path]:
    """The CLI module of checkout ``tree`` and the folder to put on PYTHONPATH so that the
    stack imports that checkout's code, not the installed copy's.

    The layer folders install as ``approximant.<layer>`` (pyproject's package-dir), which a
    bare checkout on PYTHONPATH does not give: a folder of links stands in for the install.
    Checkouts from before that namespace import their folders as top-level packages."""
    if not (tree / "approximant").is_dir():
        return "app.cli", tree
    pkg = tmp / f"importable-{tree.name}" / "approximant"
    if not pkg.exists():
        pkg.mkdir(parents=True)
        for item in (tree / "approximant").iterdir():
            (pkg / item.name).symlink_to(item)
        for layer in ("app", "engine", "storage", "tasks"):
            (pkg / layer).symlink_to(tree / layer, target_is_directory=True)
    return "approximant.app.cli", pkg.parent


def _dashboard_pid(port: int) -> int | None:
    """The ``approximant dashboard`` process serving ``port`` (a child of ``up``)."""
    want = ["dashboard", "--port", str(port)]
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if "approximant.app.cli" in args and all(w in args for w in want):
            return int(proc.name)
    return None


def _cpu_ms(pid: int | None) -> float:
    """User + system CPU time of ``pid`` so far, in ms (nan if unknown)."""
    if pid is None:
        return float("nan")
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) * 1000 / os.sysconf("SC_CLK_TCK")


# url → the dashboard's pid, for its CPU time per load
SERVERS: dict[str, int | None] = {}


def _main_thread_cpu_ms(trace: bytes) -> float:
    """CPU time (thread clock, so another process's load does not count) of the tasks the
    page's main thread ran while traced."""
    events = json.loads(trace)
    events = events.get("traceEvents", events) if isinstance(events, dict) else events
    mains = {(e["pid"], e["tid"]) for e in events if e.get("name") == "thread_name"
             and e.get("args", {}).get("name") == "CrRendererMain"}
    tasks = sorted((e["ts"], e.get("dur", 0), e.get("tdur", 0)) for e in events
                   if (e.get("pid"), e.get("tid")) in mains and e.get("ph") == "X"
                   and e.get("name") in ("RunTask", "ThreadControllerImpl::RunTask"))
    total, end = 0.0, float("-inf")
    for ts, dur, tdur in tasks:  # top-level tasks only: one task may be traced twice, nested
        if ts >= end:
            total, end = total + tdur, ts + dur
    return total / 1e3


def _free_port() -> int:
    from approximant.tasks.broker import free_port

    return free_port()


def _healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


@contextmanager
def stack(tree: Path, data: Path, workers: int, log: Path,
          env: dict[str, str] | None = None) -> Iterator[str]:
    """``approximant up`` from checkout ``tree`` on ``data``; yields the dashboard URL once its
    health check answers."""
    port = _free_port()
    out = open(log, "a")  # noqa: SIM115 - closed below
    module, path = _importable(tree, log.parent)
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "up", "--data-dir", str(data), "--port", str(port),
         "--workers", str(workers)],
        stdout=out, stderr=subprocess.STDOUT, cwd=tree,
        env={**os.environ, "APPROXIMANT_BROKER_URL": "", "PYTHONPATH": str(path),
             **(env or {})},
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    try:
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"dashboard did not start; see {log}")
            time.sleep(0.1)
        SERVERS[url] = _dashboard_pid(port)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        out.close()


# -- one page load -------------------------------------------------------------------------------

@dataclass
class Load:
    total: float  # ms from navigation start to the first chart drawn
    stages: dict[str, float] = field(default_factory=dict)  # ms each
    counts: dict[str, float] = field(default_factory=dict)


def _message_kinds(payloads: list[bytes]) -> list[str]:
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    kinds = []
    for raw in payloads:
        msg = ForwardMsg.FromString(raw)
        kind = msg.WhichOneof("type") or "?"
        if kind == "delta" and msg.delta.WhichOneof("type") == "new_element":
            kind = f"element:{msg.delta.new_element.WhichOneof('type')}"
        kinds.append(kind)
    return kinds


def _probed_page(browser):
    """A page in a new browser context (empty cache, new session) with ``PROBE_JS``, and the
    list its websocket frames are collected in."""
    ctx = browser.new_context(viewport={"width": 1400, "height": 1000})
    ctx.add_init_script(PROBE_JS)
    page = ctx.new_page()
    payloads: list[bytes] = []
    page.on("websocket", lambda ws: ws.on(
        "framereceived", lambda p: payloads.append(p if isinstance(p, bytes) else p.encode())))
    return ctx, page, payloads


def load_page(browser, url: str, timeout_s: float = 120) -> Load:
    """Open ``url`` in a new context and time it to the first drawn chart (see module doc)."""
    ctx, page, payloads = _probed_page(browser)
    server = SERVERS.get(url.split("/study")[0])
    cpu0 = _cpu_ms(server)
    browser.start_tracing(page=page, categories=["disabled-by-default-devtools.timeline",
                                                 "devtools.timeline", "toplevel"])
    try:
        page.goto(url, wait_until="commit", timeout=timeout_s * 1000)
        page.wait_for_function("() => window.__bench && 'drawn' in window.__bench.marks",
                               timeout=timeout_s * 1000, polling=100)
        # The rest of the run's messages (the page goes on after its first chart).
        page.wait_for_function(
            "() => { const w = window.__bench.ws; return w.length &&"
            " performance.now() - w[w.length - 1][0] > 1000; }",
            timeout=timeout_s * 1000, polling=200)
        b = page.evaluate("""() => {
            const n = performance.getEntriesByType('navigation')[0];
            return {...window.__bench,
                    nav: {response: n.responseEnd, dcl: n.domContentLoadedEventEnd},
                    js: performance.getEntriesByType('resource')
                        .filter(r => r.name.endsWith('.js'))
                        .map(r => [r.name.split('/').pop(), r.startTime, r.responseEnd])};
        }""")
    finally:
        trace = browser.stop_tracing()
        ctx.close()
    load = _breakdown(b, _message_kinds(payloads))
    load.counts["browser main thread CPU, ms"] = _main_thread_cpu_ms(trace)
    load.counts["server CPU, ms"] = _cpu_ms(server) - cpu0
    return load


def _breakdown(b: dict, kinds: list[str]) -> Load:
    m, ws = b["marks"], b["ws"]
    times = [t for t, _ in ws]
    if len(kinds) != len(times):  # both lists are every frame, in order
        kinds = kinds[: len(times)] + ["?"] * (len(times) - len(kinds))

    def first(kind: str, default: float = float("nan")) -> float:
        return next((t for t, k in zip(times, kinds, strict=True) if k == kind), default)

    run_start = first("new_session")
    chart_msg = first("element:vega_lite_chart")
    finished = first("script_finished")
    drawn = m["drawn"]
    after_chart = [(s, d) for s, d in b["longtasks"] if s + d > chart_msg and s < drawn]
    before_run = [(s, d) for s, d in b["longtasks"] if s < run_start]
    stages = {
        "html": b["nav"]["response"],
        "bundle (JS parse + run) → websocket opened": m.get("ws_open", float("nan"))
        - b["nav"]["response"],
        "websocket opened → script run starts": run_start - m.get("ws_open", float("nan")),
        "script run → first chart message": chart_msg - run_start,
        "first chart message → drawn": drawn - chart_msg,
    }
    counts = {
        "script runs": kinds.count("new_session"),
        "script run (first to last message), ms": finished - run_start,
        "messages": len(kinds),
        "kB received": sum(n for _, n in ws) / 1e3,
        "long tasks before the run, ms": sum(d for _, d in before_run),
        "long tasks chart → drawn, ms": sum(d for _, d in after_chart),
        "charts in the run": sum(k == "element:vega_lite_chart" for k in kinds),
        "canvas": m.get("renderer") == "canvas",
    }
    return Load(drawn, stages, counts)


def _summary(values: list[float]) -> str:
    if not values:
        return "–"
    return (f"{statistics.median(values):7.0f} ({min(values):.0f}–{max(values):.0f})")


def _report(name: str, loads: list[Load]) -> None:
    print(f"  {name}: first chart drawn {_summary([x.total for x in loads])} ms "
          f"over {len(loads)} loads (median, range)")
    for stage in loads[0].stages:
        print(f"      {stage:<48} {_summary([x.stages[stage] for x in loads])}")
    for what in loads[0].counts:
        print(f"      {what:<48} {_summary([float(x.counts[what]) for x in loads])}")


# -- part 1: the study page ------------------------------------------------------------------------

def build_study(data: Path, optimizers: int, lrs: int, seeds: int, steps: int) -> str:
    from approximant.storage.db import Database
    from approximant.storage.synthetic import OPTIMIZERS, synthetic_study

    db = Database.in_dir(data)
    try:
        opts = list(OPTIMIZERS)[:optimizers]
        grid = [10 ** (-4 + 3 * i / max(1, lrs - 1)) for i in range(lrs)]
        t0 = time.perf_counter()
        sid = synthetic_study(db, "scale", opts, grid, list(range(seeds)), steps, eval_every=1)
        with db.read() as cur:
            rows = cur.execute("SELECT count(*) FROM metrics").fetchone()[0]
        print(f"study {sid}: {len(opts) * lrs * seeds} runs, {rows:,} metric rows "
              f"(written in {time.perf_counter() - t0:.0f} s)")
    finally:
        db.close()
    return sid


def _trees(args: argparse.Namespace) -> dict[str, Path]:
    """The checkouts to serve: each ``--compare`` folder (by its name), then this one."""
    trees = {Path(d).resolve().name: Path(d).resolve() for d in args.compare}
    return trees if args.skip_self else {**trees, "this checkout": ROOT}


def part_page(args: argparse.Namespace, tmp: Path) -> None:
    from playwright.sync_api import sync_playwright

    data = tmp / "data"
    sid = build_study(data, args.optimizers, args.lrs, args.seeds, args.steps)
    trees = _trees(args)
    dirs = {}
    for name, _tree in trees.items():
        dirs[name] = tmp / f"data-{len(dirs)}"
        shutil.copytree(data, dirs[name])
    first: dict[str, list[Load]] = {n: [] for n in trees}
    cold: dict[str, list[Load]] = {n: [] for n in trees}
    with sync_playwright() as p:
        browser = _launch(p)
        for i in range(args.first_loads):
            for name, tree in trees.items():
                with stack(tree, dirs[name], 0, tmp / f"up-{name}.log") as url:
                    first[name].append(load_page(browser, f"{url}/study?study={sid}"))
            print(f"  server start {i + 1}: " + ", ".join(
                f"{n} {first[n][-1].total:.0f} ms" for n in trees), flush=True)
        with _all_stacks(trees, dirs, tmp) as urls:
            for name in trees:  # one load each, not counted: the servers' first load
                load_page(browser, f"{urls[name]}/study?study={sid}")
            for i in range(args.repeats):
                for name in trees:
                    cold[name].append(load_page(browser, f"{urls[name]}/study?study={sid}"))
                print(f"  cold load {i + 1}: " + ", ".join(
                    f"{n} {cold[n][-1].total:.0f} ms" for n in trees), flush=True)
        browser.close()
    print(f"\nStudy page, 5 M-row study, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.1f}:")
    for name in trees:
        print(f" {name}")
        _report("first load after the server starts", first[name])
        _report("cold load (new browser context, server warm)", cold[name])
    ref = list(trees)[0]
    for name in list(trees)[1:]:
        for what, loads in (("first load", first), ("cold load", cold)):
            for key in ("drawn", "browser main thread CPU, ms", "server CPU, ms"):
                def med(n: str, key: str = key, loads: dict = loads) -> float:
                    return statistics.median(x.total if key == "drawn" else x.counts[key]
                                             for x in loads[n])
                a, b = med(name), med(ref)
                print(f" {what}, {key}: {name} / {ref} = {a / b:.2f}× ({a:.0f} vs {b:.0f})")


@contextmanager
def _all_stacks(trees: dict[str, Path], dirs: dict[str, Path], tmp: Path) -> Iterator[dict]:
    from contextlib import ExitStack

    with ExitStack() as es:
        yield {name: es.enter_context(stack(tree, dirs[name], 0, tmp / f"up-{name}.log"))
               for name, tree in trees.items()}


# -- part floor: what Streamlit alone costs --------------------------------------------------------

FLOOR_APP = """
import altair as alt
import numpy as np
import pandas as pd
import streamlit as st

st.set_page_config(page_title="floor", layout="wide")
st.title("A Streamlit page with one chart")
df = pd.DataFrame({"step": np.arange(200), "loss": np.exp(-np.arange(200) / 50)})
st.altair_chart(alt.Chart(df).mark_line().encode(x="step:Q", y="loss:Q"), width="stretch")
"""


@contextmanager
def floor_server(tmp: Path) -> Iterator[str]:
    """Plain ``streamlit run`` of a page with a title and one 200-point line chart: the least
    any Streamlit page with a chart costs in this browser on this machine."""
    app = tmp / "floor_app.py"
    app.write_text(FLOOR_APP)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(app), "--server.port", str(port),
         "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while not _healthy(url):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the floor page did not start")
            time.sleep(0.2)
        SERVERS[url] = proc.pid
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


def part_floor(args: argparse.Namespace, tmp: Path) -> None:
    """The study page against a bare Streamlit page with one small chart, loads alternating
    in one browser: how much of a cold load is Streamlit's own, whatever a page does."""
    from playwright.sync_api import sync_playwright

    data = tmp / "data-floor"
    sid = build_study(data, args.optimizers, args.lrs, args.seeds, args.steps)
    loads: dict[str, list[Load]] = {"floor page (one chart)": [], "study page": []}
    with floor_server(tmp) as floor, stack(ROOT, data, 0, tmp / "up-floor.log") as url, \
            sync_playwright() as p:
        browser = _launch(p)
        urls = {"floor page (one chart)": f"{floor}/", "study page": f"{url}/study?study={sid}"}
        for u in urls.values():  # one load each, not counted: the servers' first load
            load_page(browser, u)
        for i in range(args.repeats):
            for name, u in urls.items():
                loads[name].append(load_page(browser, u))
            print(f"  load {i + 1}: " + ", ".join(f"{n} {loads[n][-1].total:.0f} ms"
                                                    for n in urls), flush=True)
        browser.close()
    print(f"\nCold loads (new browser context, servers warm), {os.cpu_count()} cores, load "
          f"average {os.getloadavg()[0]:.1f}:")
    for name, xs in loads.items():
        _report(name, xs)
    a, b = (statistics.median(x.total for x in xs) for xs in loads.values())
    print(f" study page / floor page: {b / a:.2f}× ({b:.0f} vs {a:.0f} ms)")


# -- part 2: Run → the first chart point ------------------------------------------------------

class BrokerWatch:
    """Polls the broker every few ms for the stages of the runs of one study: each run's
    progress record (queued, claimed, running, first metrics; the worker's own clock for the
    last two) and the stream (a metrics entry appears when published, and is deleted once the
    recorder has committed it)."""

    def __init__(self, client) -> None:
        import threading

        self.client = client
        self.times: dict[str, float] = {}
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _first(self, name: str, t: float | None = None) -> None:
        self.times.setdefault(name, t if t is not None else time.time())

    def _loop(self) -> None:
        from approximant.tasks.publisher import PROGRESS_KEY

        seen_metrics: set[bytes] = set()
        while not self.stop.is_set():
            keys = self.client.keys(PROGRESS_KEY.format(run_id="st-*"))
            for key in keys:
                h = {k.decode(): v.decode() for k, v in self.client.hgetall(key).items()}
                status = h.get("status")
                if status:
                    self._first("queued")
                if status in ("claimed", "running", "finished"):
                    self._first("claimed")
                rows = "val_loss" in h or "train_loss" in h
                if status == "running" and not rows:
                    self._first("running (worker clock)", float(h["ts"]))
                if rows:
                    self._first("first rows published (worker clock)", float(h["ts"]))
            entries = self.client.xrange("approximant:events")
            now_ids = set()
            for eid, fields in entries:
                if b'"type":"metrics"' in fields.get(b"e", b""):
                    now_ids.add(eid)
                    if not seen_metrics:
                        self._first("first rows on the stream")
                    seen_metrics.add(eid)
            if seen_metrics and not (seen_metrics & now_ids):
                self._first("first rows recorded")
            time.sleep(0.005)

    def __enter__(self) -> BrokerWatch:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(2)


def _fill(page, label: str, value: str) -> None:
    box = page.get_by_label(label, exact=True)
    box.fill(value)
    box.press("Enter")
    page.wait_for_timeout(300)


def run_once(browser, url: str, client, name: str, steps: int) -> dict[str, float]:
    """Submit a digits study from the form; seconds from the Run click to each stage."""
    import re

    from playwright.sync_api import expect

    from approximant.tasks.publisher import PROGRESS_KEY

    ctx, page, payloads = _probed_page(browser)
    try:
        page.goto(f"{url}/new")
        expect(page.get_by_role("heading", name="New study")).to_be_visible(timeout=60_000)
        _fill(page, "Study name", name)
        _fill(page, "Seeds", "0")
        _fill(page, "Steps per run", str(steps))
        expect(page.get_by_text(re.compile(r"runs · study id"))).to_be_visible(timeout=30_000)
        page.wait_for_timeout(1000)  # the form settled: no script run in flight
        n_before = len(payloads)
        with BrokerWatch(client) as watch:
            origin = page.evaluate("performance.timeOrigin") / 1e3
            t0 = time.time()
            page.get_by_role("button", name="Run", exact=True).click()
            page.wait_for_function("() => 'drawn' in window.__bench.marks", timeout=120_000,
                                   polling=50)
            b = page.evaluate("window.__bench")
        kinds = _message_kinds(payloads)
    finally:
        ctx.close()
    times = dict(watch.times)
    ws_times = [origin + t / 1e3 for t, _ in b["ws"]]
    after = list(zip(ws_times[n_before:], kinds[n_before:], strict=False))
    times["study page shown"] = origin + b["marks"].get("h1", float("nan")) / 1e3
    times["chart message in the browser"] = next(
        (t for t, k in after if k == "element:vega_lite_chart"), float("nan"))
    times["first point drawn"] = origin + b["marks"]["drawn"] / 1e3
    # Leave the worker idle for the next trial: every run of this study ends.
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        states = [client.hget(k, "status") for k in
                  client.keys(PROGRESS_KEY.format(run_id="st-*"))]
        if states and all(s in (b"finished", b"diverged", b"failed", b"cancelled")
                          for s in states):
            break
        time.sleep(0.2)
    for k in client.keys(PROGRESS_KEY.format(run_id="st-*")):
        client.delete(k)  # the next trial watches only its own runs
    return {k: v - t0 for k, v in sorted(times.items(), key=lambda kv: kv[1])}


RUN_STAGES = ["queued", "claimed", "running (worker clock)",
              "first rows published (worker clock)", "first rows on the stream",
              "first rows recorded", "chart message in the browser", "first point drawn"]


def part_run(args: argparse.Namespace, tmp: Path) -> None:
    from contextlib import ExitStack

    import redis
    from playwright.sync_api import sync_playwright

    from approximant.app.config import read_stack

    trees = _trees(args)
    results: dict[str, list[dict[str, float]]] = {n: [] for n in trees}
    with ExitStack() as es:
        urls, clients, logs = {}, {}, {}
        for i, (name, tree) in enumerate(trees.items()):
            data, logs[name] = tmp / f"run-data-{i}", tmp / f"up-run-{name}.log"
            urls[name] = es.enter_context(stack(tree, data, 1, logs[name]))
            clients[name] = redis.Redis.from_url(read_stack(data).broker_url)
        deadline = time.monotonic() + 300
        while (not all(" ready." in log.read_text() for log in logs.values())
               and time.monotonic() < deadline):
            time.sleep(0.2)
        time.sleep(args.idle)
        p = es.enter_context(sync_playwright())
        browser = _launch(p)
        for i in range(args.runs):
            for name in trees:
                r = run_once(browser, urls[name], clients[name], f"bench run {i} {time.time():.0f}",
                             args.run_steps)
                results[name].append(r)
            print(f"  study {i + 1}: first point drawn " + ", ".join(
                f"{n} {results[n][-1]['first point drawn']:.2f} s" for n in trees)
                + " after Run", flush=True)
        browser.close()
    print(f"\nRun → first chart point, digits_mlp, idle worker ({args.runs} studies each; the "
          "first is each worker's first run), seconds after the click, load average "
          f"{os.getloadavg()[0]:.1f}:")
    for name, rs in results.items():
        print(f" {name}")
        for stage in RUN_STAGES:
            vals = [r.get(stage, float("nan")) for r in rs]
            print(f"  {stage:<40} " + "  ".join(f"{v:6.2f}" for v in vals)
                  + f"   median {statistics.median(vals):.2f}")
    ref = list(trees)[0]
    for name in list(trees)[1:]:
        b = statistics.median(r["first point drawn"] for r in results[ref])
        a = statistics.median(r["first point drawn"] for r in results[name])
        print(f" first point drawn: {name} / {ref} = {a / b:.2f}× ({a:.2f} vs {b:.2f} s)")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--part", choices=["page", "run", "both", "floor"], default="both")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--first-loads", type=int, default=3)
    p.add_argument("--compare", action="append", default=[], metavar="DIR",
                   help="another checkout to serve beside this one (repeatable)")
    p.add_argument("--skip-self", action="store_true",
                   help="serve only the --compare checkouts, not this one")
    p.add_argument("--optimizers", type=int, default=5)
    p.add_argument("--lrs", type=int, default=8)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--runs", type=int, default=4, help="studies submitted in part run")
    p.add_argument("--run-steps", type=int, default=300)
    p.add_argument("--idle", type=float, default=5.0,
                   help="seconds the worker stays idle after it is ready, before the first Run")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-browser-"))
    try:
        if args.part in ("page", "both"):
            part_page(args, tmp)
        if args.part in ("run", "both"):
            part_run(args, tmp)
        if args.part == "floor":
            part_floor(args, tmp)
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
