"""Sign in (password or OIDC), what a session without access sees, and the sidebar's sign-out."""

from __future__ import annotations

import streamlit as st

from approximant.app import access
from approximant.app.services import get_services
from approximant.app.text import plain


def render_signin(who: access.Principal) -> None:
    access.write_cookie()  # a sign-out's cleared cookie
    st.title("Approximant", anchor=False)
    current = access.mode()
    if current == "local":
        # Only a request from another machine, through a proxy, or to a host name that is not
        # loopback gets here (access._request_is_local).
        st.error("This dashboard serves only the machine it runs on, and this request came "
                 "from elsewhere (a proxy, or a host name that is not localhost). Open it at "
                 "http://localhost, or ask its operator to configure access control.")
        return
    if current == "oidc":
        if who.role == "none" and who.who != "anonymous":
            st.warning(f"Signed in as {plain(who.who)}, who is not an editor of this "
                       "dashboard. Ask its operator to add you to APPROXIMANT\\_EDITORS, or "
                       "open a share link.")
            if st.button("Sign out", key="signout"):
                st.logout()
            return
        st.write("Sign in to launch and follow studies.")
        if st.button("Sign in", type="primary", key="signin_oidc"):
            st.login()
        return
    st.write("This dashboard needs the editor password. A share link opens its study "
             "without one.")
    with st.form("signin"):
        typed = st.text_input("Editor password", type="password", key="signin_password")
        pressed = st.form_submit_button("Sign in", type="primary")
    if pressed:
        ip = st.context.ip_address
        client = ip if isinstance(ip, str) else ""
        wait = access.throttle.blocked_for(client)
        if wait > 0:
            st.error(f"Too many failed sign-ins: try again in {wait:.0f} s.")
        elif access.check_password(typed, client):
            access.log_in_session(get_services().data_dir)
            st.rerun()
        else:
            st.error("Wrong password.")


def render_signed_in(who: access.Principal) -> None:
    """The sidebar's line about the session, with a sign-out where there is one to leave."""
    access.write_cookie()  # a sign-in's new cookie
    if who.who == "local":
        st.caption("Local editor (loopback, no sign-in configured)")
        return
    st.caption(f"Signed in: {plain(who.who)} · editor")
    if st.button("Sign out", key="signout"):
        if access.mode() == "oidc":
            st.logout()
        else:
            access.log_out_session()
            st.rerun()
