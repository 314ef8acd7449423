"""Access control: roles decided on the server, every write action refused to non-editors, the
sign-in page in front of every path, share links scoped to one study, user text shown as text."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from streamlit.testing.v1 import AppTest

from approximant.app import access, actions
from approximant.app.access import AccessDenied, Principal, decide
from approximant.app.text import plain, shown
from approximant.engine.approx.spec import parse_lab
from approximant.engine.specs import expand, parse_study
from approximant.storage.shares import Shares
from approximant.storage.stream import STREAM, EventStream, connect

MAIN = str(Path(__file__).resolve().parent.parent / "app" / "main.py")
PASSWORD = "correct horse battery staple"
EVIL = "Evil ![x](http://127.0.0.1:9/pixel.png) [log in](http://phish.example) <b>b</b>"
SPEC = parse_study({
    "name": EVIL,
    "workload": {"name": "digits_mlp"},
    "optimizers": [{"name": "sgd", "grid": {"lr": [0.1]}}],
    "seeds": [0],
    "steps": 20,
    "eval_every": 10,
})
OTHER = parse_study({**SPEC.model_dump(mode="json"), "name": "another study"})


@pytest.fixture
def studies(services):
    """Two registered studies, one run each, one running: the second must stay out of reach."""
    stream = EventStream(connect(services.broker_url))
    for spec in (SPEC, OTHER):
        runs = expand(spec)
        stream.append([
            {"type": "study", "study_id": spec.study_id, "spec": spec.model_dump(mode="json"),
             "runs": [r.model_dump(mode="json") for r in runs], "ts": 1.0},
            {"type": "metrics", "run_id": runs[0].run_id, "attempt": 1,
             "rows": [[s, "train_loss", 1.0 / s, 0.1 * s, 8 * s] for s in range(1, 11)]},
            {"type": "status", "run_id": runs[0].run_id, "attempt": 1, "status": "running",
             "step": 10, "message": None, "worker": "w", "ts": time.time()},
        ])
    services.recorder.drain()
    return services


@pytest.fixture(autouse=True)
def no_access_config(monkeypatch, tmp_path):
    for var in (access.ENV_PASSWORD, access.ENV_PASSWORD_FILE, access.ENV_EDITORS):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.chdir(tmp_path)  # no .streamlit/secrets.toml from the checkout
    monkeypatch.setenv("HOME", str(tmp_path))
    access.throttle.clear()


def app() -> AppTest:
    return AppTest.from_file(MAIN, default_timeout=60)


# --- who is what ------------------------------------------------------------------------------

def test_roles_per_mode():
    assert decide("local", token_study=None).is_editor
    assert decide("local", token_study=None, local_request=False).role == "none"
    assert decide("password", token_study=None).role == "none"
    assert decide("password", token_study=None, password_ok=True).is_editor
    # A share link is read-only for whoever opens it, an editor included, and only for its study.
    viewer = decide("password", token_study="st-a", token="tok123456", password_ok=True)
    assert viewer.role == "viewer" and viewer.may_view("st-a") and not viewer.may_view("st-b")
    assert decide("password", token_study=None, token="forged").role == "none"


def test_oidc_editors_come_from_the_operators_list(monkeypatch):
    monkeypatch.setenv(access.ENV_EDITORS, "Alice@Lab.example, bob@lab.example")
    assert decide("oidc", token_study=None, oidc_email="alice@lab.example").is_editor
    stranger = decide("oidc", token_study=None, oidc_email="eve@elsewhere.example")
    assert stranger.role == "none" and stranger.who == "eve@elsewhere.example"
    assert decide("oidc", token_study=None).role == "none"
    # An address the provider does not vouch for could be anyone's.
    claimed = access._oidc_email({"email": "alice@lab.example", "email_verified": False})
    assert not decide("oidc", token_study=None, oidc_email=claimed).is_editor
    assert access._oidc_email({"email": "alice@lab.example"}) == "alice@lab.example (unverified)"
    verified = access._oidc_email({"email": "alice@lab.example", "email_verified": True})
    assert decide("oidc", token_study=None, oidc_email=verified).is_editor
    monkeypatch.setenv(access.ENV_TRUST_UNVERIFIED, "1")
    assert access._oidc_email({"email": "alice@lab.example"}) == "alice@lab.example"


def test_mode_follows_the_operators_configuration(monkeypatch, tmp_path):
    assert access.mode() == "local"
    monkeypatch.setenv(access.ENV_PASSWORD, "short")
    with pytest.raises(ValueError, match="at least 12 characters"):
        access.mode()
    secret = tmp_path / "editor-password"
    secret.write_text(PASSWORD + "\n")
    monkeypatch.setenv(access.ENV_PASSWORD_FILE, str(secret))
    assert access.mode() == "password" and access.editor_password() == PASSWORD
    (tmp_path / ".streamlit").mkdir()
    (tmp_path / ".streamlit" / "secrets.toml").write_text(
        '[auth]\nredirect_uri = "http://lab:8501/oauth2callback"\ncookie_secret = "s"\n'
        'client_id = "c"\nclient_secret = "x"\n'
        'server_metadata_url = "https://id.example/.well-known/openid-configuration"\n')
    assert access.mode() == "oidc"


def test_a_non_loopback_address_needs_access_control(monkeypatch):
    for host in ("127.0.0.1", "localhost", "::1", "127.0.0.2"):
        assert access.bind_refusal(host) is None
    for host in ("0.0.0.0", "192.168.1.5", "::", "lab.example"):
        reason = access.bind_refusal(host)
        assert reason and f"--host {host}" in reason and access.ENV_PASSWORD in reason
    monkeypatch.setenv(access.ENV_PASSWORD, PASSWORD)
    assert access.bind_refusal("0.0.0.0") is None


def test_local_mode_serves_only_requests_addressed_to_loopback():
    local = access._request_is_local
    assert local({"Host": "localhost:8501"}) and local({"Host": "127.0.0.1:8501"})
    assert local({"Host": "[::1]:8501"})
    # A DNS-rebinding page, a LAN address, a reverse proxy in front of a loopback dashboard.
    assert not local({"Host": "evil.example:8501"})
    assert not local({"Host": "192.168.1.5:8501"})
    assert not local({"Host": "localhost:8501", "X-Forwarded-For": "10.1.2.3"})
    # A remote client that sends "Host: localhost" to a dashboard bound to every address.
    assert not local({"Host": "localhost:8501"}, "192.168.1.7")
    assert local({"Host": "localhost:8501"}, "127.0.0.1")


def test_failed_sign_ins_are_throttled_per_client(monkeypatch):
    monkeypatch.setenv(access.ENV_PASSWORD, PASSWORD)
    t = access._Throttle()
    for i in range(access.MAX_FAILURES):
        t.fail("10.0.0.9", now=100.0 + i)
    # The window is counted from the client's oldest failure (t = 100 s), 60 s long.
    assert t.blocked_for("10.0.0.9", now=110.0) == pytest.approx(50.0)
    assert t.blocked_for("10.0.0.9", now=160.5) == 0.0
    # Another client is not locked out by the first one's guessing.
    assert t.blocked_for("10.0.0.10", now=110.0) == 0.0
    # Guessing spread over many addresses hits the process-wide cap.
    for i in range(access.GLOBAL_MAX_FAILURES):
        t.fail(f"10.1.{i}.1", now=170.0)
    # (the first client's failures are over 60 s old by then and no longer count)
    assert t.blocked_for("10.0.0.10", now=175.0) == pytest.approx(55.0)
    for _ in range(access.MAX_FAILURES):
        assert not access.check_password("guess", "10.0.0.9")
    assert not access.check_password(PASSWORD, "10.0.0.9")  # even the right one, while blocked
    assert access.check_password(PASSWORD, "10.0.0.10")


def test_a_sign_in_cookie_is_signed_expires_and_dies_with_the_password(monkeypatch, tmp_path):
    monkeypatch.setenv(access.ENV_PASSWORD, PASSWORD)
    cookie = access.issue_cookie(tmp_path, now=1_000.0)
    assert access.verify_cookie(cookie, tmp_path, now=1_001.0)
    assert (tmp_path / "auth" / "cookie-secret").stat().st_mode & 0o777 == 0o600
    expires = 1_000 + access.SIGN_IN_DAYS * 86_400
    assert not access.verify_cookie(cookie, tmp_path, now=expires + 1)
    body, _, sig = cookie.rpartition(".")
    forged_expiry = f"{expires * 10}{body[len(str(expires)):]}"
    assert not access.verify_cookie(f"{forged_expiry}.{sig}", tmp_path, now=1_001.0)
    for junk in ("", "x.y", "9999999999.x.é", "a" * 10_000, "1.2.3.4.5"):
        assert not access.verify_cookie(junk, tmp_path)
    monkeypatch.setenv(access.ENV_PASSWORD, PASSWORD + " v2")
    assert not access.verify_cookie(cookie, tmp_path, now=1_001.0)
    monkeypatch.delenv(access.ENV_PASSWORD)
    assert not access.verify_cookie(cookie, tmp_path, now=1_001.0)


# --- every write action, server side ----------------------------------------------------------

VIEWER = Principal("viewer", "token abc…", SPEC.study_id)
ANONYMOUS = access.NOBODY
OUTSIDER = Principal("none", "eve@elsewhere.example")


@pytest.mark.parametrize("who", [VIEWER, ANONYMOUS, OUTSIDER], ids=lambda p: p.who)
def test_every_write_action_is_refused_to_a_non_editor(studies, who):
    services = studies
    client = redis.Redis.from_url(services.broker_url)
    runs = expand(SPEC)
    shares = Shares(services.db)
    token = shares.create(SPEC.study_id)
    lab = parse_lab({"methods": [{"map": "newton_schulz"}], "spectra": ["loguniform:1e-3"],
                     "shapes": ["16x16"]})
    before = (client.xlen(STREAM), sorted(client.keys("approximant:*")))
    attempts = {
        "launch": lambda: actions.submit_study(who, services, SPEC),
        "cancel study": lambda: actions.cancel_study(who, services, SPEC.study_id),
        "cancel runs": lambda: actions.cancel_runs(who, services, [runs[0].run_id]),
        "re-run": lambda: actions.rerun_runs(who, services, runs, keep_cancelled=[]),
        "add seeds": lambda: actions.add_seeds(who, services, SPEC, runs, runs[0].label, [7],
                                               keep_cancelled=[]),
        "share": lambda: actions.create_share(who, services, SPEC.study_id),
        "revoke": lambda: actions.revoke_share(who, services, token),
        "lab job": lambda: actions.submit_lab(who, services, lab, {}),
        "cancel lab job": lambda: actions.cancel_lab(who, services, lab.job_id),
    }
    for name, attempt in attempts.items():
        with pytest.raises(AccessDenied, match="only an editor"):
            attempt()
        assert (client.xlen(STREAM), sorted(client.keys("approximant:*"))) == before, name
    assert list(shares.of_study(SPEC.study_id)["token"]) == [token]


def test_an_editor_may_do_each_action(studies):
    editor = Principal("editor", "local")
    client = redis.Redis.from_url(studies.broker_url)
    actions.cancel_study(editor, studies, SPEC.study_id)
    assert client.exists(f"approximant:cancel:study:{SPEC.study_id}")
    token = actions.create_share(editor, studies, SPEC.study_id)
    assert Shares(studies.db).resolve(token) == SPEC.study_id
    actions.revoke_share(editor, studies, token)
    assert Shares(studies.db).resolve(token) is None


# --- the pages --------------------------------------------------------------------------------

def _open(at: AppTest, page: str | None = None, **params: str) -> AppTest:
    for k, v in params.items():
        at.query_params[k] = v
    at.run()
    if page:
        at.switch_page(page).run()
    return at


PAGES = ["screens/studies.py", "screens/study.py", "screens/new_study.py", "screens/lab.py",
         "screens/profiles.py"]


def _unreachable(at: AppTest, page: str) -> bool:
    """Whether ``page`` is not registered for this session, so no request can run it."""
    try:
        at.switch_page(page)
    except ValueError as err:
        return "Could not find a navigation page" in str(err)
    return False


def test_with_a_password_nothing_but_sign_in_runs(studies, monkeypatch):
    monkeypatch.setenv(access.ENV_PASSWORD, PASSWORD)
    at = _open(app(), study=SPEC.study_id)
    assert not at.exception
    assert [t.value for t in at.title] == ["Approximant"]
    assert not at.dataframe and not at.get("vega_lite_chart")
    assert {b.label for b in at.button} <= {"Sign in"}
    assert all(_unreachable(at, page) for page in PAGES)


def test_signing_in_with_the_password_opens_the_dashboard(studies, monkeypatch):
    monkeypatch.setenv(access.ENV_PASSWORD, PASSWORD)
    at = _open(app())
    at.text_input(key="signin_password").input("wrong password!")
    at.button[0].click().run()
    assert "Wrong password" in shown(at.error[0].value)
    at.text_input(key="signin_password").input(PASSWORD)
    at.button[0].click().run()
    assert not at.exception
    assert at.title[0].value == "Studies"
    assert "Signed in: password · editor" in shown(" ".join(c.value for c in at.caption))
    at.switch_page("screens/study.py").run()
    assert at.button(key="cancel").label == "Cancel study"
    at.button(key="signout").click().run()
    assert [t.value for t in at.title] == ["Approximant"]


def test_a_new_password_signs_out_a_session_that_is_open(studies, monkeypatch):
    monkeypatch.setenv(access.ENV_PASSWORD, PASSWORD)
    at = _open(app())
    at.text_input(key="signin_password").input(PASSWORD)
    at.button[0].click().run()
    assert at.title[0].value == "Studies"
    monkeypatch.setenv(access.ENV_PASSWORD, PASSWORD + " rotated")
    at.run()
    assert [t.value for t in at.title] == ["Approximant"]
    assert all(_unreachable(at, page) for page in PAGES)


def test_a_misconfigured_password_opens_nothing_and_tells_visitors_little(studies, monkeypatch,
                                                                          tmp_path):
    monkeypatch.setenv(access.ENV_PASSWORD_FILE, str(tmp_path / "missing" / "password"))
    at = _open(app())
    assert not at.exception
    assert [shown(e.value) for e in at.error] == [
        "Access control is misconfigured on this server; its log says why."]
    assert not at.title and not at.button


def test_a_share_link_reaches_its_study_and_nothing_else(studies):
    token = Shares(studies.db).create(SPEC.study_id)
    # Whatever path and whatever ?study= the link is edited to name.
    at = _open(app(), token=token, study=OTHER.study_id)
    assert not at.exception
    assert shown(at.title[0].value) == EVIL
    assert "another study" not in " ".join(t.value for t in at.title)
    keys = {b.key for b in at.button}
    assert not keys & {"cancel", "share_create", "rerun_runs", "cancel_runs", "seed_add",
                       "run", "run_toml", "lab.run", "lab.cancel"}
    assert not at.sidebar.caption or all("Data:" not in c.value for c in at.sidebar.caption)
    assert all("Share and export" not in e.label for e in at.expander)
    assert all(_unreachable(at, page) for page in PAGES)


def test_a_revoked_or_forged_token_shows_nothing(studies):
    shares = Shares(studies.db)
    token = shares.create(SPEC.study_id)
    shares.revoke(token)
    for t in (token, "forged-token"):
        at = _open(app(), token=t)
        assert not at.exception
        assert "unknown or was revoked" in shown(at.error[0].value)
        assert not at.dataframe and not at.metric


# --- user text --------------------------------------------------------------------------------

def test_a_metric_in_the_url_is_a_metric_name_or_nothing(studies):
    at = _open(app(), "screens/study.py", study=SPEC.study_id,
               metric="[Sign in again](http://phish.example)", metric2="![x](http://h/p.png)")
    assert not at.exception
    assert at.query_params.get("metric") in (None, "train_loss", "val_loss")
    page = " ".join(e.value for e in [*at.caption, *at.markdown, *at.error])
    assert "phish" not in page and "](" not in page


def test_names_and_url_parameters_render_as_text(studies):
    at = _open(app(), "screens/study.py", study=SPEC.study_id)
    title = at.title[0].value
    assert shown(title) == EVIL
    # Nothing Markdown would turn into an image, a link or HTML is left unescaped.
    assert "![" not in title and "](" not in title and "<b>" not in title
    at = _open(app(), "screens/study.py", study="st-x](http://phish.example)")
    err = at.error[0].value
    assert "](" not in err and "http://" not in err
    assert "st-x](http://phish.example)" in shown(err)


@pytest.mark.parametrize("text", [
    EVIL, "a\\b`c`*d*_e_", "x\nHeading\n===", ":red[alert] :material/home: $x^2$",
    "www.example.com mail@example.com https://example.com", "<script>alert(1)</script>",
])
def test_plain_text_reads_back_as_written(text):
    assert shown(plain(text)) == " ".join(text.split())


def test_plain_text_is_shortened():
    long = "n" * 10_000
    assert len(plain(long)) < 400 and "10000 characters" in plain(long)
