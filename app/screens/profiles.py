"""Page script; the page itself lives in `app.views.profiles`."""

from approximant.app.views.profiles import render

render()
