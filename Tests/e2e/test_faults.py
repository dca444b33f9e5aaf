#!/usr/bin/env python3
"""Faults around the request path, tried as an operator and as an attacker would: taken ports, a second
instance on the same ports, liveness while draining, wrong passwords arriving in bulk, reload gaps, secrets
that must never reach a log or an error body, private key permissions. Everything on loopback."""
import base64, concurrent.futures, hashlib, os, re, signal, socket, subprocess, sys, tempfile, threading, time
import unittest, urllib.error, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402

ENV = {}
HOST = "api.mygreatbank.test"


def setUpModule():
    d = tempfile.mkdtemp(prefix="mtls-proxy-faults-")
    harness.make_pki(f"{d}/pki")
    procs = harness.Processes()
    try:
        up = harness.free_port()
        harness.start_python_upstream(procs, f"{d}/pki", up, ca="ca", require=True)
    except BaseException:
        procs.stop_all()
        raise
    ENV.update(dir=d, procs=procs, up=up)


def tearDownModule():
    if "procs" in ENV:
        ENV["procs"].stop_all()


def routes(extra_route=""):
    return f"""
[upstream]
ca_file = "pki/ca.pem"
[identities.us]
cert = "pki/fusion-us.pem"
key = "pki/fusion-us.key"
[[route]]
host = "{HOST}"
identity = "us"
connect = "127.0.0.1:{ENV['up']}"
{extra_route}"""


def write(path, text, mode=None):
    with open(path, "w") as f:
        f.write(text)
    if mode is not None:
        os.chmod(path, mode)


def proxy_get(port, path="/hello", headers=None, timeout=10, source=None):
    """One GET through the proxy on a fresh connection; returns (status, headers, body)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout, source_address=(source, 0) if source else None)
    try:
        head = f"GET http://{HOST}{path} HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n"
        for k, v in (headers or {}).items():
            head += f"{k}: {v}\r\n"
        s.sendall((head + "\r\n").encode())
        return read_response(s)
    finally:
        s.close()


def raw_exchange(port, data, timeout=10):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        s.sendall(data)
        return read_response(s)
    finally:
        s.close()


def read_response(s):
    buf = b""
    while True:
        try:
            chunk = s.recv(65536)
        except (ConnectionResetError, socket.timeout):
            break
        if not chunk:
            break
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines and lines[0].startswith("HTTP/") else 0
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return status, headers, body


def run_proxy(config, timeout=15):
    """Runs `mtls-proxy run` expected to fail at start-up; returns (exit code, stderr+stdout lines)."""
    try:
        r = subprocess.run([harness.proxy_binary(), "run", "--config", config], capture_output=True, text=True,
                           timeout=timeout, env=harness.clean_env(SWIFT_BACKTRACE="enable=no"))
    except subprocess.TimeoutExpired:
        return None, [f"still running after {timeout}s"]
    return r.returncode, [line for line in (r.stdout + r.stderr).splitlines() if line.strip()]


class TakenPorts(unittest.TestCase):
    """Point 1: a listener that cannot bind ends the start with one line naming the address and the cause."""

    def check_taken(self, which):
        d = ENV["dir"]
        ports = {k: harness.free_port() for k in ("proxy", "admin", "sidecar")}
        holder = socket.socket()
        holder.bind(("127.0.0.1", ports[which]))
        holder.listen(1)
        try:
            write(f"{d}/taken-{which}.conf", f"""
[proxy]
listen = "127.0.0.1:{ports['proxy']}"
workers = 2
[admin]
listen = "127.0.0.1:{ports['admin']}"
[[listener]]
listen = "127.0.0.1:{ports['sidecar']}"
upstream = "https://{HOST}"
""" + routes())
            code, lines = run_proxy(f"{d}/taken-{which}.conf")
            self.assertEqual(code, 1, lines)
            self.assertEqual(len(lines), 1, lines)
            self.assertIn(f"127.0.0.1:{ports[which]}: address already in use", lines[0])
            self.assertNotIn("double free", "\n".join(lines))
            # Nothing is left listening on the other ports.
            for name, port in ports.items():
                if name != which:
                    with self.assertRaises(OSError):
                        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        finally:
            holder.close()

    def test_admin_port_taken(self):
        self.check_taken("admin")

    def test_forward_port_taken(self):
        self.check_taken("proxy")

    def test_sidecar_port_taken(self):
        self.check_taken("sidecar")


class SecondInstance(unittest.TestCase):
    """Point 2: a second process on the same addresses is refused; the first keeps every request."""

    def test_second_instance_is_refused(self):
        d = ENV["dir"]
        port, sidecar = harness.free_port(), harness.free_port()
        text = f"""
[proxy]
listen = "127.0.0.1:{port}"
workers = 2
[[listener]]
listen = "127.0.0.1:{sidecar}"
upstream = "https://{HOST}"
""" + routes()
        write(f"{d}/first.conf", text)
        procs = harness.Processes()
        try:
            harness.start_proxy(procs, f"{d}/first.conf", f"{d}/first.log", port)
            code, lines = run_proxy(f"{d}/first.conf")
            self.assertEqual(code, 1, lines)
            self.assertEqual(len(lines), 1, lines)
            self.assertIn(f"127.0.0.1:{port}: address already in use", lines[0])
            # Another config on the sidecar address only.
            write(f"{d}/second.conf", text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{harness.free_port()}"))
            code, lines = run_proxy(f"{d}/second.conf")
            self.assertEqual(code, 1, lines)
            self.assertIn(f"127.0.0.1:{sidecar}: address already in use", lines[0])
            statuses = [proxy_get(port)[0] for _ in range(12)]
            self.assertEqual(statuses, [200] * 12)
        finally:
            procs.stop_all()


def admin_get(port, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class DrainLiveness(unittest.TestCase):
    """Point 3: /healthz stays 200 during a drain longer than the health staleness limit; /readyz is 503."""

    def test_healthz_stays_ok_through_a_long_drain(self):
        d = ENV["dir"]
        port, admin = harness.free_port(), harness.free_port()
        write(f"{d}/drain.conf", f"""
[proxy]
listen = "127.0.0.1:{port}"
workers = 2
drain_timeout = "30s"
[admin]
listen = "127.0.0.1:{admin}"
""" + routes())
        procs = harness.Processes()
        try:
            proxy = harness.start_proxy(procs, f"{d}/drain.conf", f"{d}/drain.log", port)
            result = {}

            def download():
                result["r"] = proxy_get(port, "/drip?size=200000&ms=9000", timeout=30)

            t = threading.Thread(target=download)
            t.start()
            time.sleep(1.0)
            proxy.send_signal(signal.SIGTERM)
            time.sleep(6.5)
            self.assertEqual(admin_get(admin, "/healthz"), (200, "ok\n"))
            status, body = admin_get(admin, "/readyz")
            self.assertEqual(status, 503)
            self.assertIn("draining", body)
            t.join(30)
            self.assertEqual(result["r"][0], 200)
            self.assertEqual(len(result["r"][2]), 200000)
            self.assertEqual(proxy.wait(timeout=15), 0)
        finally:
            procs.stop_all()


class KeyPermissions(unittest.TestCase):
    """Point 7: every private key the proxy reads draws the same warning when others can read it."""

    def test_interception_ca_key_readable_by_others_is_reported(self):
        d = ENV["dir"]
        os.makedirs(f"{d}/ca7", exist_ok=True)
        for f in ("local-ca.pem", "local-ca.key"):
            if os.path.exists(f"{d}/ca7/{f}"):
                os.unlink(f"{d}/ca7/{f}")
        port = harness.free_port()
        write(f"{d}/perm.conf", f"""
[proxy]
listen = "127.0.0.1:{port}"
workers = 1
[intercept]
ca_cert = "ca7/local-ca.pem"
ca_key = "ca7/local-ca.key"
""" + routes())
        r = subprocess.run([harness.proxy_binary(), "ca", "init", "--config", f"{d}/perm.conf"], capture_output=True,
                           text=True, timeout=30)
        self.assertEqual(r.returncode, 0, r.stderr)
        os.chmod(f"{d}/ca7/local-ca.key", 0o644)
        r = subprocess.run([harness.proxy_binary(), "check", "--config", f"{d}/perm.conf"], capture_output=True,
                           text=True, timeout=30)
        self.assertIn("local-ca.key", r.stdout + r.stderr)
        self.assertRegex(r.stdout + r.stderr, r"warning: .*local-ca\.key is readable by everyone \(mode 644\)")
        procs = harness.Processes()
        try:
            harness.start_proxy(procs, f"{d}/perm.conf", f"{d}/perm.log", port)
            time.sleep(0.3)
            self.assertRegex(harness.read(f"{d}/perm.log"), r"warning .*local-ca\.key is readable by everyone \(mode 644\)")
        finally:
            procs.stop_all()


if __name__ == "__main__":
    harness.run_suite()
