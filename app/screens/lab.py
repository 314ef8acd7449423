"""Page script; the page itself lives in `app.views.lab`."""

from app.views.lab import render

render()
