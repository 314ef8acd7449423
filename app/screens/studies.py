"""Page script; the page itself lives in `app.views.studies`."""

from approximant.app.views.studies import render

render()
