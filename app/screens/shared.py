"""Page script; the read-only study view lives in `app.views.study`."""

from app.views.study import render_shared

render_shared()
