"""A frozen snapshot of a study page: one self-contained HTML file that opens without the
server or the network.

Charts go in as Vega-Lite specs with their (already downsampled) data inlined, rendered by the
vega-embed bundle that ``vl-convert`` ships, embedded once. Tables are static HTML and the study
spec is included verbatim, so the file documents what was run.
"""

from __future__ import annotations

import html
import json
from datetime import UTC, datetime
from functools import cache

import altair as alt
import pandas as pd

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 1200px; color: #1f2430; padding: 0 1rem; }
h1 { margin-bottom: 0.2rem; } .meta { color: #5b6170; margin-bottom: 1.5rem; }
.chart { width: 100%; margin: 1.5rem 0; }
table { border-collapse: collapse; font-size: 0.85rem; margin: 0.5rem 0 1.5rem; }
th, td { border-bottom: 1px solid #e3e5ea; padding: 0.25rem 0.6rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
pre { background: #f5f6f8; padding: 1rem; overflow-x: auto; font-size: 0.8rem; }
"""


@cache
def _vega_bundle() -> str:
    import vl_convert as vlc

    # vl-convert names its bundles by Vega-Lite major.minor, the version Altair writes specs for.
    return vlc.javascript_bundle(vl_version=".".join(alt.SCHEMA_VERSION[1:].split(".")[:2]))


def _script_safe(text: str) -> str:
    # JSON inside <script>: "</" would end the script element early.
    return text.replace("</", "<\\/")


def build_snapshot(title: str, meta: str, charts: dict[str, alt.TopLevelMixin],
                   tables: dict[str, pd.DataFrame], spec: dict) -> str:
    """The whole page as one HTML string."""
    divs, calls = [], []
    for i, (name, chart) in enumerate(charts.items()):
        spec_json = chart.properties(width="container").to_json(indent=None) \
            if hasattr(chart, "properties") else chart.to_json(indent=None)
        divs.append(f'<h2>{html.escape(name)}</h2><div class="chart" id="chart{i}"></div>')
        calls.append(f"vegaEmbed('#chart{i}', {_script_safe(spec_json)}, "
                     "{mode: 'vega-lite', actions: {export: true, source: false, "
                     "compiled: false, editor: false}}).catch(console.error);")
    table_html = "".join(
        f"<h2>{html.escape(name)}</h2>"
        + frame.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0)
        for name, frame in tables.items() if not frame.empty
    )
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>{html.escape(title)} · Approximant snapshot</title>
<style>{_STYLE}</style>
<script type="text/javascript">{_vega_bundle()}</script>
</head><body>
<h1>{html.escape(title)}</h1>
<div class="meta">{html.escape(meta)} · snapshot taken {stamp}</div>
{"".join(divs)}
{table_html}
<h2>Study spec</h2><pre>{html.escape(json.dumps(spec, indent=2))}</pre>
<script type="text/javascript">
{chr(10).join(calls)}
</script>
</body></html>
"""
