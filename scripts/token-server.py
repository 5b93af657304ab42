#!/usr/bin/env python3
"""Minimal Docker registry token service (the protocol ghcr.io uses), for tests.

GET  /token?service=S&scope=repository:NAME:pull,push   (HTTP Basic auth)
POST /token  (form: grant_type=password, username, password, service, scope
              [, access_type=offline: the answer also holds a refresh_token];
              or grant_type=refresh_token, refresh_token, service, scope)

Users come from a file with lines `user:token:perm`, perm one of
  rw    pull, push, delete (and catalog listing)
  ro    pull only
  none  authenticates, but is granted nothing (a token lacking read:packages)
The file is re-read on every request, so tests may edit it while running.

Tokens are RS256 JWTs whose header carries the signing certificate in `x5c`;
give that certificate to the registry as `auth.token.rootcertbundle`.
Signing is done by `openssl dgst -sha256 -sign`, so only the standard
library is needed. Tokens and passwords are never logged.
"""

import argparse
import base64
import datetime
import hmac
import http.server
import json
import os
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid

PERMS = {
    "rw": {"pull", "push", "delete", "*"},
    "ro": {"pull"},
    "none": set(),
}
EXPIRES_IN = 300


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def load_users(path):
    users = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            user, _, rest = line.partition(":")
            token, _, perm = rest.rpartition(":")
            users[user] = (token, perm if perm in PERMS else "none")
    return users


def parse_scopes(values):
    """`type:name:a,b` items; a parameter may hold several separated by spaces."""
    out = []
    for value in values:
        for item in value.split():
            head, _, actions = item.rpartition(":")
            typ, _, name = head.partition(":")
            if typ and name:
                out.append((typ, name, [a for a in actions.split(",") if a]))
    return out


def grant(perm, scopes):
    allowed = PERMS[perm]
    access = []
    for typ, name, actions in scopes:
        if typ == "repository":
            ok = [a for a in actions if a in allowed]
        elif typ == "registry" and name == "catalog" and perm == "rw":
            ok = [a for a in actions if a == "*"]
        else:
            ok = []
        access.append({"type": typ, "name": name, "actions": ok})
    return access


class Signer:
    def __init__(self, key_path, cert_path, issuer):
        self.key_path = key_path
        self.issuer = issuer
        der = subprocess.run(
            ["openssl", "x509", "-in", cert_path, "-outform", "DER"],
            check=True, capture_output=True,
        ).stdout
        self.x5c = [base64.b64encode(der).decode()]

    def token(self, subject, audience, access):
        now = int(time.time())
        header = {"typ": "JWT", "alg": "RS256", "x5c": self.x5c}
        claims = {
            "iss": self.issuer, "sub": subject, "aud": audience,
            "exp": now + EXPIRES_IN, "nbf": now - 10, "iat": now,
            "jti": uuid.uuid4().hex, "access": access,
        }
        signing_input = (b64url(json.dumps(header, separators=(",", ":")).encode())
                         + "." + b64url(json.dumps(claims, separators=(",", ":")).encode()))
        sig = subprocess.run(
            ["openssl", "dgst", "-sha256", "-sign", self.key_path],
            input=signing_input.encode(), check=True, capture_output=True,
        ).stdout
        return signing_input + "." + b64url(sig)


class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "lazyimg-token/1"
    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes: with Nagle on, the body waits for
    # the client's delayed ACK (40 ms on Linux) on every token.
    disable_nagle_algorithm = True

    def setup(self):
        # TLS handshake here, in the worker thread, so a stuck client
        # cannot block the accept loop.
        if hasattr(self.request, "do_handshake"):
            self.request.settimeout(30)
            self.request.do_handshake()
        super().setup()

    def log_message(self, fmt, *args):  # the default would log the raw request line
        pass

    def log(self, user, scopes, outcome):
        scope_txt = " ".join(f"{t}:{n}:{','.join(a)}" for t, n, a in scopes) or "-"
        line = f"{datetime.datetime.now().isoformat(timespec='seconds')} {self.command} user={user or '-'} scope={scope_txt} {outcome}\n"
        with self.server.log_lock:
            sys.stderr.write(line)
            sys.stderr.flush()

    def send_json(self, code, body, extra_headers=()):
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        for k, v in extra_headers:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def unauthorized(self, user, scopes, why):
        self.log(user, scopes, f"401 {why}")
        self.send_json(401, {"errors": [{"code": "UNAUTHORIZED", "message": why}]},
                       [("WWW-Authenticate", 'Basic realm="lazyimg-token"')])

    def refresh_token(self, user):
        """An OAuth2 refresh token for `user` (docker's `identitytoken`): the
        user name with an HMAC under this process's key, so it needs no state
        and dies with the server."""
        mac = hmac.new(self.server.refresh_key, user.encode(), "sha256").hexdigest()
        return f"{b64url(user.encode())}.{mac}"

    def refresh_user(self, token):
        """The user `token` (from `refresh_token`) was issued to, or None."""
        encoded, _, mac = token.partition(".")
        try:
            user = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
        except (ValueError, UnicodeDecodeError):
            return None
        ok = hmac.compare_digest(self.refresh_token(user).encode(), token.encode())
        return user if ok else None

    def issue(self, user, password, service, scopes, offline=False, refreshed=False):
        try:
            users = load_users(self.server.users_path)
        except OSError as e:
            self.log(user, scopes, f"500 cannot read users file: {e.strerror}")
            self.send_json(500, {"errors": [{"code": "UNKNOWN", "message": "users file unreadable"}]})
            return
        if user is None:
            return self.unauthorized(None, scopes, "authentication required")
        entry = users.get(user)
        if entry is None or not (refreshed or hmac.compare_digest(entry[0].encode(), (password or "").encode())):
            return self.unauthorized(user, scopes, "invalid username or token")
        access = grant(entry[1], scopes)
        jwt = self.server.signer.token(user, service or self.server.default_service, access)
        granted = " ".join(f"{a['name']}:{','.join(a['actions']) or '<none>'}" for a in access) or "-"
        self.log(user, scopes, f"200 granted={granted}" + (" via=refresh_token" if refreshed else ""))
        body = {
            "token": jwt, "access_token": jwt, "expires_in": EXPIRES_IN,
            "issued_at": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if offline:
            body["refresh_token"] = self.refresh_token(user)
        self.send_json(200, body)

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/token":
            return self.send_json(404, {"errors": [{"code": "NOT_FOUND", "message": "use /token"}]})
        q = urllib.parse.parse_qs(url.query)
        scopes = parse_scopes(q.get("scope", []))
        user = password = None
        auth = self.headers.get("Authorization", "")
        if auth[:6].lower() == "basic ":
            try:
                user, _, password = base64.b64decode(auth[6:].strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                return self.unauthorized(None, scopes, "malformed basic credentials")
        self.issue(user, password, q.get("service", [None])[0], scopes)

    def do_POST(self):
        # OAuth2 password grant, as used by some clients (docker with identity tokens).
        if urllib.parse.urlsplit(self.path).path != "/token":
            return self.send_json(404, {"errors": [{"code": "NOT_FOUND", "message": "use /token"}]})
        length = int(self.headers.get("Content-Length") or 0)
        form = urllib.parse.parse_qs(self.rfile.read(length).decode(errors="replace"))
        scopes = parse_scopes(form.get("scope", []))
        service = form.get("service", [None])[0]
        grant_type = form.get("grant_type", [""])[0]
        if grant_type == "refresh_token":
            user = self.refresh_user(form.get("refresh_token", [""])[0])
            if user is None:
                self.log(None, scopes, "401 invalid refresh_token")
                return self.send_json(401, {"error": "invalid_grant"})
            return self.issue(user, None, service, scopes, refreshed=True)
        if grant_type != "password":
            self.log(None, scopes, "400 unsupported grant_type")
            return self.send_json(400, {"error": "unsupported_grant_type"})
        self.issue(form.get("username", [None])[0], form.get("password", [""])[0],
                   service, scopes, offline=form.get("access_type", [""])[0] == "offline")


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        # Handshake failures etc.: one short line, never a traceback with data.
        sys.stderr.write(f"{datetime.datetime.now().isoformat(timespec='seconds')} "
                         f"connection error from {client_address[0]}: {sys.exc_info()[1]!r}\n")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", default="127.0.0.1:15001", help="host:port (default %(default)s)")
    p.add_argument("--tls-cert", required=True, help="server certificate (PEM)")
    p.add_argument("--tls-key", required=True, help="server key (PEM)")
    p.add_argument("--sign-key", required=True, help="token signing RSA key (PEM)")
    p.add_argument("--sign-cert", required=True, help="certificate of the signing key (the registry's rootcertbundle)")
    p.add_argument("--users", required=True, help="file of user:token:perm lines")
    p.add_argument("--issuer", default="lazyimg-testenv", help="iss claim (default %(default)s)")
    p.add_argument("--service", default="lazyimg-upstream", help="aud when the request has no service (default %(default)s)")
    args = p.parse_args()

    host, _, port = args.listen.rpartition(":")
    srv = Server((host, int(port)), Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.tls_cert, args.tls_key)
    srv.socket = ctx.wrap_socket(srv.socket, server_side=True, do_handshake_on_connect=False)
    srv.signer = Signer(args.sign_key, args.sign_cert, args.issuer)
    srv.users_path = args.users
    srv.refresh_key = os.urandom(32)
    srv.default_service = args.service
    srv.log_lock = threading.Lock()
    sys.stderr.write(f"token server listening on https://{args.listen}/token (pid {os.getpid()})\n")
    sys.stderr.flush()
    srv.serve_forever()


if __name__ == "__main__":
    main()
