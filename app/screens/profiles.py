"""Page script; the page itself lives in `app.views.profiles`."""

from app.views.profiles import render

render()
