"""Page script; the page itself lives in `app.views.new_study`."""

from approximant.app.views.new_study import render

render()
