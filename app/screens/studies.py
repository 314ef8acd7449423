"""Page script; the page itself lives in `app.views.studies`."""

from app.views.studies import render

render()
