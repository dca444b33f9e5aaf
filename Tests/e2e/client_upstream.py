#!/usr/bin/env python3
"""The TLS upstream of the client matrix (Tests/e2e/test_clients.py): upstream.py's paths, plus

  /echo                   as upstream.py, and X-Seen-Expect: the Expect field the upstream received
  /git/...                git smart HTTP (clone, fetch, push) through git-http-backend, for repositories under --git-root
  /simple/...             a pip index: files under --pip-root, as they are (index pages and wheels)

Usage: client_upstream.py --port P --cert C --key K --ca CA --git-root DIR --pip-root DIR  (client certificate required)
"""
import argparse, hashlib, os, ssl, subprocess, sys
from urllib.parse import urlparse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import upstream  # noqa: E402

GIT_HTTP_BACKEND = next((p for p in ("/usr/lib/git-core/git-http-backend", "/usr/libexec/git-core/git-http-backend")
                         if os.path.exists(p)), None)


class Handler(upstream.Handler):
    git_root = None
    pip_root = None

    def read_body_bytes(self):
        parts = []
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            while True:
                size = int(self.rfile.readline(100).split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline(1000) not in (b"\r\n", b"\n", b""):
                        pass
                    break
                parts.append(self.rfile.read(size))
                self.rfile.readline(3)
        else:
            left = int(self.headers.get("Content-Length", "0"))
            while left:
                chunk = self.rfile.read(min(left, 1 << 16))
                if not chunk:
                    break
                parts.append(chunk)
                left -= len(chunk)
        return b"".join(parts)

    def git(self, url):
        body = self.read_body_bytes()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": self.git_root, "GIT_HTTP_EXPORT_ALL": "1",
            "REQUEST_METHOD": self.command, "PATH_INFO": url.path[len("/git"):], "QUERY_STRING": url.query,
            "CONTENT_TYPE": self.headers.get("Content-Type", ""), "CONTENT_LENGTH": str(len(body)),
            "REMOTE_USER": "workflow", "REMOTE_ADDR": "127.0.0.1",
            "HTTP_CONTENT_ENCODING": self.headers.get("Content-Encoding", ""),
            "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
        }
        out = subprocess.run([GIT_HTTP_BACKEND], input=body, env=env, capture_output=True).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        if not _:
            head, _, payload = out.partition(b"\n\n")
        status = 200
        fields = []
        for line in head.decode("latin-1").splitlines():
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                fields.append((name.strip(), value.strip()))
        self.send_response(status)
        for k, v in fields:
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(payload)))
        self.send_header("X-Client-Subject", self.subject())
        self.end_headers()
        self.wfile.write(payload)

    def pip(self, url):
        self.read_body_bytes()
        relative = os.path.normpath(url.path[len("/simple/"):]).lstrip("/")
        path = os.path.join(self.pip_root, relative)
        if os.path.isdir(path):
            path = os.path.join(path, "index.html")
        if relative.startswith("..") or not os.path.isfile(path):
            self.send_simple(404, "not found\n")
            return
        with open(path, "rb") as f:
            data = f.read()
        self.send_response(200)
        self.send_header("Content-Type", "text/html" if path.endswith(".html") else "application/octet-stream")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Client-Subject", self.subject())
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def handle_any(self):
        url = urlparse(self.path)
        if url.path.startswith("/git/") and self.git_root:
            self.git(url)
        elif url.path.startswith("/simple/") and self.pip_root:
            self.pip(url)
        elif url.path == "/echo":
            n, digest = self.read_body()
            self.send_simple(200, f"{n} {digest}\n", extra=[("X-Seen-Expect", self.headers.get("Expect", ""))])
        else:
            super().handle_any()

    do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = handle_any


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--ca", required=True)
    p.add_argument("--git-root")
    p.add_argument("--pip-root")
    a = p.parse_args()
    Handler.git_root, Handler.pip_root = a.git_root, a.pip_root
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.load_verify_locations(a.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = upstream.Server(("127.0.0.1", a.port), Handler)
    server.socket = ctx.wrap_socket(server.socket, server_side=True, do_handshake_on_connect=False)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
