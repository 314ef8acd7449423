"""Page script; the page itself lives in `app.views.study`."""

from approximant.app.views.study import render

render()
