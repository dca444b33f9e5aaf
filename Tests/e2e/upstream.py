#!/usr/bin/env python3
"""A real TLS upstream for the end-to-end tests: HTTP/1.1 over TLS, optionally requiring a client certificate.

Paths:
  /headers                the request line and headers as received, as JSON
  /whoami                 200, body and X-Client-Subject header: the client certificate's subject CN, or "none"
  /echo                   reads the request body (Content-Length or chunked), answers its length and SHA-256
  /download?size=N        N bytes with Content-Length, streamed
  /chunked?size=N         N bytes in chunked coding
  /close?size=N           N bytes with neither, then close_notify and close
  /slow?ms=N              waits N ms, then answers
  /drip?size=N&ms=T       N bytes with Content-Length, trickled over T ms
Usage: upstream.py --port P --cert C --key K [--ca CA --require-client-cert]
"""
import argparse, hashlib, json, http.server, socketserver, ssl, sys, time
from urllib.parse import urlparse, parse_qs

BLOCK = bytes(range(256)) * 256  # 64 KiB pattern


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def subject(self):
        cert = self.connection.getpeercert()
        if not cert:
            return "none"
        for rdn in cert.get("subject", ()):
            for key, value in rdn:
                if key == "commonName":
                    return value
        return "unknown"

    def read_body(self):
        h = hashlib.sha256()
        n = 0
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                line = self.rfile.readline(100)
                size = int(line.split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1000) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = size
                while left:
                    chunk = self.rfile.read(min(left, 1 << 16))
                    h.update(chunk)
                    n += len(chunk)
                    left -= len(chunk)
                self.rfile.readline(3)
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
                left -= len(chunk)
        return n, h.hexdigest()

    def send_simple(self, status, body, extra=()):
        data = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Client-Subject", self.subject())
        self.send_header("X-Seen-Host", self.headers.get("Host", ""))
        self.send_header("X-Seen-Via", self.headers.get("Via", ""))
        self.send_header("X-Seen-Proxy-Authorization", self.headers.get("Proxy-Authorization", ""))
        for k, v in extra:
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def stream(self, size, mode):
        self.send_response(200)
        self.send_header("X-Client-Subject", self.subject())
        if mode == "length":
            self.send_header("Content-Length", str(size))
        elif mode == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command == "HEAD":
            return
        left = size
        while left:
            part = BLOCK[: min(left, len(BLOCK))]
            if mode == "chunked":
                self.wfile.write(b"%x\r\n" % len(part) + part + b"\r\n")
            else:
                self.wfile.write(part)
            left -= len(part)
        if mode == "chunked":
            self.wfile.write(b"0\r\n\r\n")
        elif mode == "close":
            # A close-delimited body ends cleanly only with close_notify (as nginx sends it); a bare FIN would be
            # a truncation, which the proxy must report as one.
            self.wfile.flush()
            try:
                self.connection.unwrap()
            except (OSError, ssl.SSLError):
                pass

    def handle_any(self):
        url = urlparse(self.path)
        q = parse_qs(url.query)
        size = int(q.get("size", ["0"])[0])
        if url.path == "/headers":
            self.read_body()
            body = json.dumps({"request_line": self.requestline, "headers": [[k, v] for k, v in self.headers.items()]})
            self.send_simple(200, body)
        elif url.path == "/echo":
            n, digest = self.read_body()
            self.send_simple(200, f"{n} {digest}\n")
        elif url.path == "/download":
            self.read_body()
            self.stream(size, "length")
        elif url.path == "/chunked":
            self.read_body()
            self.stream(size, "chunked")
        elif url.path == "/close":
            self.read_body()
            self.stream(size, "close")
        elif url.path == "/drip":
            # size bytes, spread over ms milliseconds in 16 pieces, with Content-Length
            self.read_body()
            total_ms = int(q.get("ms", ["2000"])[0])
            self.send_response(200)
            self.send_header("Content-Length", str(size))
            self.end_headers()
            piece = max(1, size // 16)
            left = size
            while left:
                n = min(piece, left)
                self.wfile.write(b"d" * n)
                self.wfile.flush()
                left -= n
                time.sleep(total_ms / 16000)
        elif url.path == "/slow":
            self.read_body()
            time.sleep(int(q.get("ms", ["1000"])[0]) / 1000)
            self.send_simple(200, "slow\n")
        else:
            self.read_body()
            self.send_simple(200, f"hello {self.subject()} {self.command} {self.path}\n")

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = handle_any


class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
    daemon_threads = True
    allow_reuse_address = True


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca")
    p.add_argument("--require-client-cert", action="store_true")
    p.add_argument("--max-tls", choices=["1.2", "1.3"])
    a = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    if a.max_tls == "1.2":
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    if a.ca:
        ctx.load_verify_locations(a.ca)
        ctx.verify_mode = ssl.CERT_REQUIRED if a.require_client_cert else ssl.CERT_OPTIONAL
    server = Server(("127.0.0.1", a.port), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    print("ready", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
