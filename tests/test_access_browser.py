"""Access control in a real headless Chromium against a real ``approximant up``: the sign-in in
front of every path, a hostile study name shown as text (its image never fetched), and a share
link that opens its study, on any path, with no "Page not found" modal and nothing else.

Screenshots (sign-in, the study as its editor sees it, the shared view) go to test-artifacts/,
or to docs/img/ with ``APPROXIMANT_DOC_IMAGES=1`` (how the committed ones were made).
"""

from __future__ import annotations

import os
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from approximant.app.access import ENV_PASSWORD
from approximant.tasks.broker import free_port

pytestmark = pytest.mark.browser

DOC_IMAGES = Path(__file__).resolve().parent.parent / "docs" / "img"
PASSWORD = "correct horse battery staple"
JOIN = "\u2060"


class _Pixel(BaseHTTPRequestHandler):
    hits: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - the http.server name
        _Pixel.hits.append(self.path)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _text(locator) -> str:
    return locator.inner_text().replace(JOIN, "")


def test_sign_in_hostile_name_and_share_link(tmp_path: Path, running_stack, launch,
                                             create_share_link, artifacts: Path) -> None:
    from playwright.sync_api import expect, sync_playwright

    pixel = ThreadingHTTPServer(("127.0.0.1", free_port()), _Pixel)
    threading.Thread(target=pixel.serve_forever, daemon=True).start()
    evil = (f"Evil ![x](http://127.0.0.1:{pixel.server_port}/pixel.png) "
            "[log in](http://phish.example)")
    IMG = DOC_IMAGES if os.environ.get("APPROXIMANT_DOC_IMAGES") == "1" else artifacts
    IMG.mkdir(parents=True, exist_ok=True)
    with running_stack(tmp_path, {ENV_PASSWORD: PASSWORD}) as url, sync_playwright() as p:
        browser = launch(p)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        try:
            # A deep link of a page the session may not open yet: the sign-in, on that path.
            page.goto(f"{url}/new")
            box = page.get_by_label("Editor password")
            expect(box).to_be_visible(timeout=30_000)
            expect(page.get_by_text("Page not found")).to_have_count(0)
            page.screenshot(path=str(IMG / "signin.png"))
            box.fill("not the password")
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_text("Wrong password.")).to_be_visible(timeout=30_000)
            box.fill(PASSWORD)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="New study")).to_be_visible(timeout=30_000)

            name = page.get_by_label("Study name", exact=True)
            name.fill(evil)
            name.press("Enter")
            for label, value in (("Seeds", "0"), ("Steps per run", "30"),
                                 ("Evaluate every", "10")):
                field = page.get_by_label(label, exact=True)
                field.fill(value)
                field.press("Enter")
            expect(page.get_by_text(re.compile(r"3 runs · study id"))).to_be_visible(
                timeout=30_000)
            page.get_by_role("button", name="Run", exact=True).click()
            page.wait_for_url(re.compile(r"/study\?study=st-"), timeout=30_000)
            title = page.locator("h1").first
            expect(title).to_be_visible(timeout=30_000)
            assert _text(title) == evil
            assert page.locator("h1 a[href*='phish'], h1 img").count() == 0
            expect(page.get_by_text("3 of 3 runs done")).to_be_visible(timeout=120_000)
            page.screenshot(path=str(IMG / "study-editor.png"))
            # A reload is a new Streamlit session: the signed cookie keeps the editor in.
            page.reload()
            expect(page.get_by_text("3 of 3 runs done")).to_be_visible(timeout=30_000)
            expect(page.get_by_role("button", name="Sign out")).to_be_visible()

            link = create_share_link(page)
            viewer = browser.new_context().new_page()
            viewer.set_viewport_size({"width": 1400, "height": 1000})
            # The link as sent, and the same token on other paths, show only that study.
            for target in (link, link.replace("/shared?", "/new?"),
                           link.replace("/shared?", "/?")):
                viewer.goto(target)
                expect(viewer.get_by_text("3 of 3 runs done")).to_be_visible(timeout=30_000)
                assert _text(viewer.locator("h1").first) == evil
                expect(viewer.get_by_text("Page not found")).to_have_count(0)
                expect(viewer.get_by_text("read-only view", exact=False)).to_be_visible()
                expect(viewer.get_by_role("button", name="Cancel study")).to_have_count(0)
                expect(viewer.get_by_text("Share and export")).to_have_count(0)
                expect(viewer.get_by_role("link", name="New study")).to_have_count(0)
            viewer.screenshot(path=str(IMG / "shared-view.png"))
            # Without the token the same browser is a stranger again.
            viewer.goto(page.url)
            expect(viewer.get_by_label("Editor password")).to_be_visible(timeout=30_000)
            expect(viewer.get_by_text("3 of 3 runs done")).to_have_count(0)
            # Signing out ends it for the browser, not only for the tab.
            page.get_by_role("button", name="Sign out").click()
            expect(page.get_by_label("Editor password")).to_be_visible(timeout=30_000)
            page.reload()
            expect(page.get_by_label("Editor password")).to_be_visible(timeout=30_000)
        except Exception:
            page.screenshot(path=str(artifacts / "access-failure.png"), full_page=True)
            raise
        finally:
            browser.close()
            pixel.shutdown()
    assert _Pixel.hits == [], "a study name made the browser fetch an image"



def test_oidc_sign_in_makes_listed_users_editors(tmp_path: Path, running_stack,
                                                 launch) -> None:
    """``st.login`` against a real (local) OpenID Connect provider: a listed e-mail is an
    editor, anyone else who signs in sees nothing."""
    pytest.importorskip("authlib", reason="st.login needs Authlib: pip install '.[oidc]'")
    from oidc_provider import Provider
    from playwright.sync_api import expect, sync_playwright

    port = free_port()
    with Provider() as provider:
        (tmp_path / ".streamlit").mkdir()
        (tmp_path / ".streamlit" / "secrets.toml").write_text(
            provider.secrets_toml(f"http://127.0.0.1:{port}/oauth2callback"))
        env = {"APPROXIMANT_EDITORS": "alice@lab.example", "AUTHLIB_INSECURE_TRANSPORT": "1"}
        with running_stack(tmp_path, env, port=port, cwd=tmp_path) as url, \
                sync_playwright() as p:
            browser = launch(p)
            try:
                for email, editor in (("alice@lab.example", True), ("eve@else.example", False)):
                    provider.email = email
                    page = browser.new_context().new_page()
                    page.goto(f"{url}/new")
                    button = page.get_by_role("button", name="Sign in")
                    expect(button).to_be_visible(timeout=30_000)
                    button.click()
                    if editor:
                        signed = page.get_by_text(re.compile(r"Signed in: .* · editor"))
                        expect(signed).to_be_visible(timeout=30_000)
                        assert _text(signed) == f"Signed in: {email} · editor"
                        nav = page.get_by_test_id("stSidebarNavItems")
                        expect(nav.get_by_role("link", name="New study")).to_be_visible()
                    else:
                        expect(page.get_by_text("who is not an editor")).to_be_visible(
                            timeout=30_000)
                        expect(page.get_by_role("link", name="New study")).to_have_count(0)
                        expect(page.get_by_role("heading", name="Studies")).to_have_count(0)
            finally:
                browser.close()
