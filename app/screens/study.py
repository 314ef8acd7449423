"""Page script; the page itself lives in `app.views.study`."""

from app.views.study import render

render()
