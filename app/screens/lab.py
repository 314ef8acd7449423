"""Page script; the page itself lives in `app.views.lab`."""

from approximant.app.views.lab import render

render()
