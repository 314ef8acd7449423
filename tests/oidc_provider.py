"""A minimal OpenID Connect provider on loopback, for testing ``st.login`` end to end.

It implements what Streamlit's sign-in uses (discovery, authorization code, token with a signed
ID token, JWKS, userinfo) and signs in whoever ``email`` names, without asking: the test plays
the user. Not a model of a secure provider; nothing here leaves 127.0.0.1.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlencode, urlparse

with warnings.catch_warnings():
    # Deprecated in favour of joserfc, which Streamlit does not need; fine for a test provider.
    warnings.simplefilter("ignore")
    from authlib.jose import JsonWebKey, jwt


class Provider:
    def __init__(self, client_id: str = "approximant", client_secret: str = "s3cret") -> None:
        self.client_id, self.client_secret = client_id, client_secret
        self.email = "nobody@example.invalid"
        self.key = JsonWebKey.generate_key("RSA", 2048, is_private=True,
                                           options={"kid": "test"})
        self._codes: dict[str, dict] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.base = f"http://127.0.0.1:{self.server.server_port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Provider:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()

    def secrets_toml(self, redirect_uri: str) -> str:
        return (f'[auth]\nredirect_uri = "{redirect_uri}"\n'
                f'cookie_secret = "{secrets.token_hex(16)}"\n'
                f'client_id = "{self.client_id}"\nclient_secret = "{self.client_secret}"\n'
                f'server_metadata_url = "{self.base}/.well-known/openid-configuration"\n')

    def _id_token(self, nonce: str | None, email: str) -> str:
        now = int(time.time())
        claims = {"iss": self.base, "sub": email, "aud": self.client_id, "iat": now,
                  "exp": now + 600, "email": email, "email_verified": True, "name": email}
        if nonce:
            claims["nonce"] = nonce
        return jwt.encode({"alg": "RS256", "kid": "test"}, claims, self.key).decode()

    def _handler(self):
        provider = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def _json(self, body: dict, status: int = 200) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:  # noqa: N802 - the http.server name
                url = urlparse(self.path)
                q = {k: v[0] for k, v in parse_qs(url.query).items()}
                base = provider.base
                if url.path == "/.well-known/openid-configuration":
                    self._json({
                        "issuer": base, "authorization_endpoint": f"{base}/authorize",
                        "token_endpoint": f"{base}/token", "jwks_uri": f"{base}/jwks",
                        "userinfo_endpoint": f"{base}/userinfo",
                        "response_types_supported": ["code"],
                        "subject_types_supported": ["public"],
                        "id_token_signing_alg_values_supported": ["RS256"],
                        "scopes_supported": ["openid", "email", "profile"],
                        "token_endpoint_auth_methods_supported": ["client_secret_basic",
                                                                  "client_secret_post"],
                    })
                elif url.path == "/jwks":
                    self._json({"keys": [provider.key.as_dict(is_private=False)]})
                elif url.path == "/authorize":
                    code = secrets.token_urlsafe(16)
                    provider._codes[code] = {"nonce": q.get("nonce"), "email": provider.email}
                    back = {"code": code, "state": q.get("state", "")}
                    self.send_response(302)
                    self.send_header("Location", f"{q['redirect_uri']}?{urlencode(back)}")
                    self.end_headers()
                elif url.path == "/userinfo":
                    self._json({"sub": provider.email, "email": provider.email})
                else:
                    self._json({"error": "not_found"}, 404)

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
                grant = provider._codes.pop(form.get("code", ""), None)
                if self.path != "/token" or grant is None:
                    self._json({"error": "invalid_grant"}, 400)
                    return
                self._json({"access_token": secrets.token_urlsafe(16), "token_type": "Bearer",
                            "expires_in": 600,
                            "id_token": provider._id_token(grant["nonce"], grant["email"])})

        return Handler
