"""Pebble as serverPKI 0.9.11 knew Let's Encrypt (2020), for running the original against the lab.

    front = AcmeFront(pebble, account_file).start()   # https://127.0.0.1:PORT, Pebble's TLS certificate
    front.url                                          # the original's LE_SERVER; clients trust pebble.ca_bundle
    front.close()

Two differences between Pebble 2.4 and the Let's Encrypt of 0.9.11's time stop the original, and
the front hides them (the original itself is not patched):
- its ACME library (automatoes) fetches LE_SERVER + "/directory"; Pebble serves "/dir". The front
  maps that one path and passes everything else through with the Host header kept, so every URL
  Pebble writes (and checks in a signed request) is the front's.
- Pebble answers a finalize with the order still "processing"; 0.9.11 gives up on that (its
  `return None` after await_for_order_fulfillment is one indent too far out). The front waits
  until the order is valid, asking Pebble as the client would (POST-as-GET signed with the
  account's key from the account file), and answers the finalize with the finished order.
Any other client (ours) works through the front as it does with Pebble directly.
"""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

from .pebble import PebbleLab
from .ports import free_port

HOP_BY_HOP = ("connection", "content-length", "transfer-encoding", "date", "server")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class AcmeFront:
    """An HTTPS relay to Pebble on 127.0.0.1:PORT: /directory is /dir, a finalize answers the finished order."""

    def __init__(self, pebble: PebbleLab, account_file: Path):
        self.pebble = pebble
        self.account_file = account_file      # read when a finalize comes (the original's -Z writes it)
        self.port = free_port()
        front = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt, *args):
                pass

            def _relay(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                path = "/dir" if self.path.split("?")[0].rstrip("/") == "/directory" else self.path
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "content-length")}
                status, reply_headers, data = front.upstream(self.command, path, body, headers)
                if (self.command == "POST" and self.path.startswith("/finalize-order/") and status == 200
                        and json.loads(data).get("status") == "processing"):
                    kid = json.loads(_unb64(json.loads(body)["protected"]))["kid"]
                    finished = front.await_order(kid, reply_headers.get("Location"), self.headers["Host"])
                    if finished is not None:
                        data = json.dumps(finished).encode()
                self.send_response(status)
                for k, v in reply_headers.items():
                    if k.lower() not in HOP_BY_HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_POST = do_HEAD = _relay

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(pebble.base / "tls-cert.pem", pebble.base / "tls-key.pem")   # what ca_bundle vouches for
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> "AcmeFront":
        self._thread.start()
        return self

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "AcmeFront":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    def upstream(self, method: str, path: str, body: bytes | None, headers: dict) -> tuple[int, dict, bytes]:
        context = ssl.create_default_context(cafile=str(self.pebble.ca_bundle))
        conn = http.client.HTTPSConnection("127.0.0.1", self.pebble.port, context=context, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            reply = conn.getresponse()
            return reply.status, dict(reply.getheaders()), reply.read()
        finally:
            conn.close()

    def await_order(self, kid: str, order_url: str | None, host: str, timeout: float = 20) -> dict | None:
        """POST-as-GET the order, signed with the account's key (RS256: the original's accounts are RSA),
        until it is valid or invalid; None when it is neither in time (the client then sees "processing")."""
        if not order_url:
            return None
        key = serialization.load_pem_private_key(json.loads(self.account_file.read_text())["key"].encode(), None)
        path = "/" + order_url.split("/", 3)[3]
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            nonce = self.upstream("HEAD", "/nonce-plz", None, {"Host": host})[1]["Replay-Nonce"]
            protected = _b64(json.dumps({"alg": "RS256", "kid": kid, "nonce": nonce, "url": order_url}).encode())
            signature = key.sign(f"{protected}.".encode(), padding.PKCS1v15(), hashes.SHA256())
            jws = json.dumps({"protected": protected, "payload": "", "signature": _b64(signature)}).encode()
            status, _, data = self.upstream("POST", path, jws, {"Host": host, "Content-Type": "application/jose+json"})
            if status == 200 and json.loads(data).get("status") in ("valid", "invalid"):
                return json.loads(data)
            time.sleep(0.2)
        return None
