"""Exports: the raw-data Parquet file and the self-contained HTML snapshot."""

from __future__ import annotations

import io
import json

import pandas as pd

from approximant.app import charts
from approximant.app.snapshot import build_snapshot
from approximant.storage import analytics as an
from approximant.storage.export import study_parquet
from approximant.storage.synthetic import synthetic_study


def test_parquet_holds_every_metric_row_with_its_config(db):
    sid = synthetic_study(db, "p", ["adamw", "muon"], [1e-3], [0, 1], 100,
                          metrics=("train_loss", "val_loss"), eval_every=10)
    frame = pd.read_parquet(io.BytesIO(study_parquet(db, sid)))
    assert len(frame) == 4 * (100 + 11)
    assert set(frame["label"]) == {"adamw[lr=0.001]", "muon[lr=0.001]"}
    assert json.loads(frame["hparams"].iloc[0]) == {"lr": 0.001}
    assert frame.groupby(["run_id", "name", "step"]).size().max() == 1


def test_snapshot_is_one_offline_file_with_charts_tables_and_spec(db):
    sid = synthetic_study(db, "snap </script> & co", ["adamw", "muon"], [1e-3], [0, 1], 100)
    a = an.Analytics(db)
    runs = a.runs([sid])
    grouped = an.group_curves(a.run_curves([sid], "val_loss"), runs)
    chart = charts.band_chart(grouped, "val_loss", "step")
    table = an.group_table(runs, a.finals([sid], "val_loss"), baseline="adamw[lr=0.001]")
    spec = {"name": "snap </script> & co", "steps": 100}
    page = build_snapshot("snap </script> & co", "meta", {"Validation loss": chart},
                          {"Comparison": table}, spec)
    assert page.count("vegaEmbed('#chart0'") == 1
    assert "window.vegaEmbed" in page  # the renderer itself is inside the file
    assert "<script src" not in page and "cdn.jsdelivr" not in page
    assert "snap &lt;/script&gt; &amp; co" in page  # escaped in text
    assert page.count("</script>") == 2  # the bundle's and the calls': nothing closes early
    assert "muon[lr=0.001]" in page and "&quot;steps&quot;: 100" in page
