"""Study-page cost at scale: 200 runs × 5 000 steps × 5 metrics (5 M metric rows).

Prints, for a synthetic study written straight into DuckDB:
  * the first chart's server time split into query (DuckDB gridding), aggregation (seed bands in
    pandas) and chart build (Altair spec with its data);
  * the whole study page in Streamlit's AppTest (every tab: two curve charts, comparison table,
    lr sensitivity, time to target, runs): cold, warm (same data), and a live refresh (new data
    version, so every cached query misses — what a running study pays every 2 s).

    python benchmarks/bench_analytics.py [--optimizers 5 --lrs 8 --seeds 5 --steps 5000]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from approximant.storage import analytics as an
from approximant.storage.db import Database
from approximant.storage.synthetic import OPTIMIZERS, synthetic_study


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--optimizers", type=int, default=5)
    p.add_argument("--lrs", type=int, default=8)
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--steps", type=int, default=5000)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()

    from approximant.app import charts

    tmp = Path(tempfile.mkdtemp(prefix="bench-analytics-"))
    db = Database.in_dir(tmp)
    opts = list(OPTIMIZERS)[: args.optimizers]
    lrs = [10 ** (-4 + 3 * i / max(1, args.lrs - 1)) for i in range(args.lrs)]
    t0 = time.perf_counter()
    sid = synthetic_study(db, "scale", opts, lrs, list(range(args.seeds)), args.steps,
                          eval_every=1)
    gen = time.perf_counter() - t0
    with db.read() as cur:
        rows = cur.execute("SELECT count(*) FROM metrics").fetchone()[0]
    n_runs = len(opts) * len(lrs) * args.seeds
    print(f"study: {n_runs} runs × {args.steps} steps × 5 metrics = {rows:,} metric rows "
          f"(written in {gen:.1f} s)")

    a = an.Analytics(db)
    runs = a.runs([sid])
    points = an.grid_points(runs["label"].nunique())
    q, curves = timed(lambda: a.run_curves([sid], "val_loss", "step", points), args.repeats)
    g, grouped = timed(lambda: an.group_curves(curves, runs, "config", "mean", "std"),
                       args.repeats)
    gb, _ = timed(lambda: an.group_curves(curves, runs, "config", "mean", "bootstrap"),
                  args.repeats)
    c, _ = timed(lambda: charts.band_chart(grouped, "val_loss", "step").to_dict(),
                 args.repeats)
    print(f"first chart: query {q * 1e3:.0f} ms ({len(curves):,} gridded points) + seed bands "
          f"{g * 1e3:.0f} ms (bootstrap {gb * 1e3:.0f} ms) + chart spec {c * 1e3:.0f} ms "
          f"= {(q + g + c) * 1e3:.0f} ms server time")
    wall_q, _ = timed(lambda: a.run_curves([sid], "val_loss", "wall", points), args.repeats)
    fin, finals = timed(lambda: a.finals([sid], "val_loss"), args.repeats)
    tab, _ = timed(lambda: an.group_table(runs, finals, baseline=runs["label"].iloc[0]),
                   args.repeats)
    ttt, _ = timed(lambda: a.time_to_target([sid], "val_loss", 0.5), args.repeats)
    print(f"other queries: wall-time grid {wall_q * 1e3:.0f} ms, finals {fin * 1e3:.0f} ms "
          f"+ comparison table {tab * 1e3:.0f} ms, time to target {ttt * 1e3:.0f} ms")
    db.close()

    from streamlit.testing.v1 import AppTest

    from approximant.app.services import open_services, set_services

    services = open_services(tmp, None)
    set_services(services)
    main_py = str(Path(__file__).resolve().parent.parent / "app" / "main.py")

    def page() -> AppTest:
        at = AppTest.from_file(main_py, default_timeout=300)
        at.query_params["study"] = sid
        at.run()
        return at

    at = page()
    t0 = time.perf_counter()
    at.switch_page("screens/study.py").run()
    cold = time.perf_counter() - t0
    assert not at.exception, at.exception
    n_charts, n_tables = len(at.get("vega_lite_chart")), len(at.dataframe)
    warm, _ = timed(lambda: at.run(), 3)

    def refresh() -> None:
        with services.db.write() as cur:  # a new row arrives: the data version moves
            cur.execute("UPDATE runs SET last_step = last_step + 1, updated_at = now() "
                        "WHERE position = 0")
        at.run()

    live, _ = timed(refresh, 3)
    print(f"study page (AppTest, all tabs: {n_charts} charts, {n_tables} tables): cold "
          f"{cold:.2f} s, warm rerun {warm:.2f} s, live refresh with new data {live:.2f} s")
    set_services(None)
    services.close()


if __name__ == "__main__":
    main()
