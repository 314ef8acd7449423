"""Who may do what on this dashboard: the access mode, the session's principal, the role checks.

Two roles. An **editor** launches, cancels, re-runs, adds seeds, shares, revokes and runs lab
jobs. A **viewer** holds a share token: it sees the one study the token names, read-only, and
nothing else (no other study, page or action).

How a session becomes an editor depends on the mode the operator configured:

* ``oidc``: an ``[auth]`` section in Streamlit's ``secrets.toml`` (``st.login``); editors are the
  e-mail addresses in ``APPROXIMANT_EDITORS``.
* ``password``: ``APPROXIMANT_EDITOR_PASSWORD`` or ``APPROXIMANT_EDITOR_PASSWORD_FILE``; a
  browser that typed it is an editor for ``SIGN_IN_DAYS`` (a signed cookie, checked on every
  run) or until it signs out; changing the password signs every browser and open tab out.
* ``local``: nothing configured. Only a dashboard bound to loopback may run this way, and only a
  request from this host addressed to a loopback name (no proxy headers) is the one local
  editor; anything else (a reverse proxy, a DNS-rebinding page) gets no access.

The checks live here and in ``app.actions``, on the server; hiding a button is only for looks.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import logging
import os
import secrets
import threading
import time
import tomllib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

log = logging.getLogger("approximant.access")

ENV_PASSWORD = "APPROXIMANT_EDITOR_PASSWORD"
ENV_PASSWORD_FILE = "APPROXIMANT_EDITOR_PASSWORD_FILE"
ENV_EDITORS = "APPROXIMANT_EDITORS"
Mode = Literal["oidc", "password", "local"]
Role = Literal["editor", "viewer", "none"]

# A session key no widget can write: the client can only set keys of widgets it was shown.
_SESSION_KEY = "_approximant_login"
# Failed sign-ins allowed per client, and from all clients together, in FAILURE_WINDOW_S
# (see _Throttle).
MAX_FAILURES = 10
GLOBAL_MAX_FAILURES = 100
FAILURE_WINDOW_S = 60.0


class AccessDenied(PermissionError):
    """A write action, or a page, that the session's role does not allow."""


@dataclass(frozen=True)
class Principal:
    """The session's identity and role, decided on the server for every script run."""

    role: Role
    who: str  # for the audit log and the sidebar: "local", "password", "alice@x", "token …"
    study_id: str | None = None  # a viewer's one study

    @property
    def is_editor(self) -> bool:
        return self.role == "editor"

    def may_view(self, study_id: str) -> bool:
        return self.is_editor or (self.role == "viewer" and self.study_id == study_id)


NOBODY = Principal("none", "anonymous")


# --- configuration (read by the CLI before the server starts, and by every page run) ----------

def secrets_files(cwd: Path | None = None) -> list[Path]:
    """The files Streamlit reads ``st.secrets`` from, in its own order."""
    return [Path.home() / ".streamlit" / "secrets.toml",
            (cwd or Path.cwd()) / ".streamlit" / "secrets.toml"]


def oidc_configured(cwd: Path | None = None) -> bool:
    """Whether Streamlit's ``[auth]`` section is set, so ``st.login`` can work."""
    for path in secrets_files(cwd):
        try:
            auth = tomllib.loads(path.read_text()).get("auth")
        except (OSError, tomllib.TOMLDecodeError):
            continue
        if isinstance(auth, dict) and auth.get("cookie_secret") and auth.get("redirect_uri"):
            return True
    return False


def editor_password() -> str | None:
    """The operator's editor password: from its file (kept out of the environment) or env."""
    path = os.environ.get(ENV_PASSWORD_FILE)
    if path:
        try:
            text = Path(path).read_text().strip()
        except OSError as err:
            raise ValueError(f"{ENV_PASSWORD_FILE}: cannot read {path}: {err.strerror}") from None
        if not text:
            raise ValueError(f"{ENV_PASSWORD_FILE}: {path} is empty")
        return text
    return os.environ.get(ENV_PASSWORD) or None


MIN_PASSWORD = 12


def mode() -> Mode:
    if oidc_configured():
        return "oidc"
    password = editor_password()
    if password is not None:
        if len(password) < MIN_PASSWORD:
            raise ValueError(f"{ENV_PASSWORD}: must be at least {MIN_PASSWORD} characters "
                             f"(got {len(password)})")
        return "password"
    return "local"


def editors() -> set[str]:
    raw = os.environ.get(ENV_EDITORS, "")
    return {e.strip().lower() for e in raw.split(",") if e.strip()}


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


HOW_TO_CONFIGURE = (
    f"set {ENV_PASSWORD} (at least {MIN_PASSWORD} characters) or {ENV_PASSWORD_FILE}, or "
    "configure an OIDC provider in .streamlit/secrets.toml ([auth]) with "
    f"{ENV_EDITORS}; see docs/security.md"
)


def bind_refusal(host: str) -> str | None:
    """Why the dashboard may not listen on ``host`` as configured, or None."""
    try:
        current = mode()
    except ValueError as err:
        return str(err)
    if current == "local" and not is_loopback(host):
        return (f"--host {host}: a dashboard reachable from other machines needs access "
                f"control, or anyone who reaches it can launch and cancel runs: {HOW_TO_CONFIGURE}")
    return None


# --- the session ------------------------------------------------------------------------------

def _request_is_local(headers: dict[str, str], ip: str | None = None) -> bool:
    """A request from this machine (Streamlit reports no address, or a loopback one, for a
    loopback connection) addressed to a loopback host, not via a proxy.

    No headers at all is a script run without a browser (Streamlit's AppTest).
    """
    if ip is not None and not is_loopback(ip):
        return False
    if not headers:
        return True
    lower = {k.lower(): v for k, v in headers.items()}
    if any(k in lower for k in ("x-forwarded-for", "forwarded", "x-real-ip")):
        return False
    host = lower.get("host", "")
    host = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    return is_loopback(host)


def decide(current: Mode, *, token_study: str | None, token: str = "",
           password_ok: bool = False, oidc_email: str | None = None,
           local_request: bool = True) -> Principal:
    """The principal for one script run, from facts the server holds (pure, for tests).

    A share link always shows its study read-only, whoever opens it: that is what its
    recipient sees, and a link never widens what a session can do.
    """
    if token:
        if token_study is None:
            return NOBODY
        return Principal("viewer", f"token {token[:6]}…", token_study)
    if current == "local":
        return Principal("editor", "local") if local_request else NOBODY
    if current == "password":
        return Principal("editor", "password") if password_ok else NOBODY
    if oidc_email is not None:
        email = oidc_email.lower()
        if email in editors():
            return Principal("editor", email)
        return Principal("none", email)
    return NOBODY


ENV_TRUST_UNVERIFIED = "APPROXIMANT_OIDC_TRUST_UNVERIFIED"


def _oidc_email(user) -> str | None:
    """The signed-in user's e-mail, if the provider vouches for it: with a provider that lets
    anyone register any address, an unverified one could be an editor's."""
    email = user.get("email")
    if not email:
        return None
    if user.get("email_verified") is not True and os.environ.get(ENV_TRUST_UNVERIFIED) != "1":
        log.warning("OIDC sign-in of %s without email_verified: not an editor (set %s=1 for "
                    "a provider that does not send it)", email, ENV_TRUST_UNVERIFIED)
        return f"{email} (unverified)"
    return str(email)


def current() -> Principal:
    """This script run's principal (call from a page; recomputed on every run).

    Raises ``ValueError`` only for a broken configuration (``mode``); anything a client sends
    (a token, a cookie, headers) can at worst make it nobody.
    """
    import streamlit as st

    from approximant.app.services import get_services

    current_mode = mode()
    data_dir = get_services().data_dir
    token = st.query_params.get("token", "")
    token_study = _token_study(token) if token else None
    email = None
    if current_mode == "oidc" and st.user.is_logged_in:
        email = _oidc_email(st.user)
    password_ok = False
    if current_mode == "password":
        # The cookie this tab signed in with, else the browser's (a reload, another tab);
        # checked on every run, so a changed password or an expiry ends an open session too.
        mine = st.session_state.get(_SESSION_KEY, "")
        browser = "" if st.session_state.get(_SIGNED_OUT) else \
            dict(st.context.cookies or {}).get(COOKIE, "")
        password_ok = verify_cookie(mine, data_dir) or verify_cookie(browser, data_dir)
    ip = st.context.ip_address
    return decide(current_mode, token_study=token_study, token=token,
                  password_ok=password_ok, oidc_email=email,
                  # Only a string is an address (a test harness has none to give).
                  local_request=_request_is_local(dict(st.context.headers or {}),
                                                  ip if isinstance(ip, str) else None))


def _token_study(token: str) -> str | None:
    from approximant.app.services import get_services
    from approximant.storage.shares import Shares

    if len(token) > 100:  # ours are 24 characters; a longer one is not worth a query
        return None
    return Shares(get_services().db).resolve(token)


def require_editor(principal: Principal, action: str) -> None:
    """Refuse ``action`` unless ``principal`` is an editor; log every decision."""
    if not principal.is_editor:
        log.warning("refused: %s by %s (%s)", action, principal.who, principal.role)
        raise AccessDenied(f"{action}: only an editor may do this (this session: "
                           f"{principal.role})")
    log.info("action: %s by %s", action, principal.who)


# --- password login ---------------------------------------------------------------------------

class _Throttle:
    """Failed sign-ins in the last ``FAILURE_WINDOW_S`` seconds, per client and in all.

    A client that failed ``MAX_FAILURES`` times waits; the process-wide cap, ten times
    higher, only stops a guessing attack spread over many addresses. A single client cannot
    lock the editors out.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._failures: deque[tuple[float, str]] = deque()

    def _trim(self, now: float) -> None:
        while self._failures and now - self._failures[0][0] > FAILURE_WINDOW_S:
            self._failures.popleft()

    def blocked_for(self, client: str = "", now: float | None = None) -> float:
        now = time.monotonic() if now is None else now
        with self._lock:
            self._trim(now)
            mine = [t for t, c in self._failures if c == client]
            if len(mine) >= MAX_FAILURES:
                return FAILURE_WINDOW_S - (now - mine[0])
            if len(self._failures) >= GLOBAL_MAX_FAILURES:
                return FAILURE_WINDOW_S - (now - self._failures[0][0])
            return 0.0

    def fail(self, client: str = "", now: float | None = None) -> None:
        with self._lock:
            self._failures.append((time.monotonic() if now is None else now, client))

    def clear(self) -> None:
        with self._lock:
            self._failures.clear()


throttle = _Throttle()


def check_password(typed: str, client: str = "") -> bool:
    """Constant-time comparison with the operator's password; failures are throttled."""
    expected = editor_password()
    if expected is None or throttle.blocked_for(client) > 0:
        return False
    ok = hmac.compare_digest(typed.encode(), expected.encode())
    if not ok:
        throttle.fail(client)
        log.warning("failed editor sign-in from %s", client or "this machine")
    return ok


# --- staying signed in: a cookie signed with a key only this dashboard holds -----------------

COOKIE = "approximant_editor"
SIGN_IN_DAYS = 7
_SIGNED_OUT = "_approximant_signed_out"  # this tab signed out: its old cookie no longer counts
_COOKIE_TO_SET = "_approximant_cookie"


def _cookie_key(data_dir: Path) -> bytes | None:
    """HMAC key: a random secret kept in the data directory (0600), mixed with the password,
    so a new password invalidates every cookie issued under the old one."""
    password = editor_password()
    if password is None:
        return None
    path = data_dir / "auth" / "cookie-secret"
    if not path.exists():
        # Written whole under a private name, then linked into place: two sessions signing in
        # at once both end up with the one secret that won, never a half-written file.
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    return hmac.new(path.read_bytes(), password.encode(), hashlib.sha256).digest()


def issue_cookie(data_dir: Path, now: float | None = None) -> str:
    key = _cookie_key(data_dir)
    if key is None:
        raise ValueError("no editor password configured")
    expires = int((time.time() if now is None else now) + SIGN_IN_DAYS * 86_400)
    body = f"{expires}.{secrets.token_urlsafe(9)}"
    return f"{body}.{hmac.new(key, body.encode(), hashlib.sha256).hexdigest()}"


def verify_cookie(value: str, data_dir: Path, now: float | None = None) -> bool:
    """Whether ``value`` is a cookie this dashboard issued under the current password and
    that has not expired. Any other string, however malformed, is simply not one."""
    if not value or not value.isascii() or len(value) > 200:
        return False
    key = _cookie_key(data_dir)
    if key is None:
        return False
    body, _, sig = value.rpartition(".")
    expires = body.split(".", 1)[0]
    good = hmac.new(key, body.encode(), hashlib.sha256).hexdigest()
    return (hmac.compare_digest(sig.encode(), good.encode()) and expires.isdigit()
            and int(expires) > (time.time() if now is None else now))


def log_in_session(data_dir: Path) -> None:
    import streamlit as st

    cookie = issue_cookie(data_dir)
    st.session_state[_SESSION_KEY] = cookie
    st.session_state.pop(_SIGNED_OUT, None)
    st.session_state[_COOKIE_TO_SET] = cookie


def log_out_session() -> None:
    import streamlit as st

    st.session_state.pop(_SESSION_KEY, None)
    st.session_state[_SIGNED_OUT] = True
    st.session_state[_COOKIE_TO_SET] = ""  # cleared in the browser by the next run


def write_cookie() -> None:
    """Hand a cookie issued or cleared in this session to the browser (once).

    Streamlit has no server-side way to set a cookie outside its own OIDC flow; a zero-height
    component on this origin sets it from script. ``SameSite=Strict``: no other site's page
    can make the browser send it.
    """
    import json

    import streamlit as st
    from streamlit.components.v1 import html

    value = st.session_state.pop(_COOKIE_TO_SET, None)
    if value is None:
        return
    age = SIGN_IN_DAYS * 86_400 if value else 0
    cookie = f"{COOKIE}={value}; path=/; max-age={age}; SameSite=Strict"
    html(f"<script>document.cookie = {json.dumps(cookie)};</script>", height=0)
