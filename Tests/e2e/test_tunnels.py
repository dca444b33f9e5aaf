#!/usr/bin/env python3
"""HTTPS_PROXY users: CONNECT tunnels (blind for tls routes, intercepted for mtls routes with the local CA),
refusals, and WebSocket upgrades over an mTLS upstream connection."""
import base64, json, os, socket, ssl, stat, subprocess, sys, tempfile, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import Fixture, proxy_section, route, tear_down  # noqa: E402
import requests  # noqa: E402

ENV = {}


def setUpModule():
    with Fixture("mtls-proxy-tunnels-", ports=("proxy", "plain_proxy", "nginx_mtls", "nginx_tls", "ws", "up")) as fx:
        ports = fx.ports
        fx.nginx()
        fx.python_upstream("up", ca="ca", require=True)
        fx.tls_script("ws_echo.py", "ws")
        routes = (harness.US_IDENTITY
                  + route("api.mygreatbank.test", identity="us", connect=ports["nginx_mtls"])
                  + route("files.mygreatbank.test", identity="us", connect=ports["up"])
                  + route("status.example.com", action="tls", connect=ports["nginx_tls"])
                  + route("ws.mygreatbank.test", identity="us", connect=ports["ws"])
                  + route("*", action="deny"))
        fx.write("proxy.conf", proxy_section(ports["proxy"], workers=2, intercept=True) + routes)
        fx.write("plain.conf", proxy_section(ports["plain_proxy"]) + routes)
        local_ca = fx.local_ca("proxy.conf", export="local-ca-export.pem")
        fx.proxy("proxy")
        fx.proxy("plain", port="plain_proxy")
    ENV.update(fx.env(url=f"http://127.0.0.1:{ports['proxy']}", plain=f"http://127.0.0.1:{ports['plain_proxy']}",
                      local_ca=local_ca))


def tearDownModule():
    tear_down(ENV)


def curl(*args, env=None):
    return subprocess.run(["curl", "-sS", "--max-time", "20", *args], capture_output=True, text=True, env=env or harness.clean_env())


class LocalCA(unittest.TestCase):
    def test_init_made_a_private_key_and_exports_the_certificate(self):
        mode = stat.S_IMODE(os.stat(f"{ENV['dir']}/state/local-ca.key").st_mode)
        self.assertEqual(mode, 0o600)
        self.assertEqual(harness.read(ENV["local_ca"]), harness.read(f"{ENV['dir']}/state/local-ca.pem"))
        self.assertNotIn("PRIVATE KEY", harness.read(ENV["local_ca"]))
        text = subprocess.run(["openssl", "x509", "-in", ENV["local_ca"], "-noout", "-text"], capture_output=True, text=True).stdout
        self.assertIn("CA:TRUE", text)
        self.assertIn("prime256v1", text)

    def test_init_refuses_to_overwrite(self):
        r = subprocess.run([harness.proxy_binary(), "ca", "init", "--config", f"{ENV['dir']}/proxy.conf"], capture_output=True, text=True)
        self.assertEqual(r.returncode, 1)
        self.assertIn("already exists", r.stderr)


class Interception(unittest.TestCase):
    def test_curl_with_https_proxy_reaches_the_mtls_upstream_with_the_identity(self):
        r = curl("-i", "--cacert", ENV["local_ca"], "https://api.mygreatbank.test/v1/x",
                 env=harness.clean_env(https_proxy=ENV["url"]))
        self.assertIn("HTTP/1.1 200", r.stdout, r.stderr)
        self.assertIn("X-Client-Subject: CN=fusion-us,O=mtls-proxy test", r.stdout)

    def test_python_requests_with_verify(self):
        s = requests.Session()
        for _ in range(2):
            r = s.get("https://files.mygreatbank.test/whoami", proxies={"https": ENV["url"]}, verify=ENV["local_ca"], timeout=10)
            self.assertEqual((r.status_code, r.headers["X-Client-Subject"]), (200, "fusion-us"))
        r = s.post("https://files.mygreatbank.test/echo", data=b"x" * 300000, proxies={"https": ENV["url"]}, verify=ENV["local_ca"], timeout=10)
        self.assertTrue(r.text.startswith("300000 "))
        # Each worker writes its access log lines in batches, within 100 ms: wait for them.
        deadline = time.time() + 10
        while True:
            records = [json.loads(l) for l in harness.read(f"{ENV['dir']}/proxy.log").splitlines() if l.startswith("{")]
            inside = [r for r in records if r["host"] == "files.mygreatbank.test" and r["path"] == "/whoami"]
            if len(inside) >= 2 or time.time() > deadline:
                break
            time.sleep(0.05)
        self.assertTrue(inside and all(r["intercepted"] and r["identity"] == "us" for r in inside), inside)

    def test_minted_leaf_names_only_the_host(self):
        r = curl("-v", "-o", "/dev/null", "--cacert", ENV["local_ca"], "https://files.mygreatbank.test/whoami",
                 env=harness.clean_env(https_proxy=ENV["url"]))
        self.assertIn('subjectAltName: host "files.mygreatbank.test" matched', r.stderr)
        self.assertIn("CN=mtls-proxy local CA", r.stderr)

    def test_sni_for_another_name_is_refused(self):
        sock = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=5)
        sock.sendall(b"CONNECT files.mygreatbank.test:443 HTTP/1.1\r\nHost: files.mygreatbank.test:443\r\n\r\n")
        self.assertTrue(sock.recv(1024).startswith(b"HTTP/1.1 200"))
        ctx = ssl.create_default_context(cafile=ENV["local_ca"])
        ctx.check_hostname = False
        with self.assertRaises(ssl.SSLError):
            ctx.wrap_socket(sock, server_hostname="api.mygreatbank.test").do_handshake()

    def test_untrusted_local_ca_fails_at_the_client(self):
        r = curl("-o", "/dev/null", "https://api.mygreatbank.test/", env=harness.clean_env(https_proxy=ENV["url"]))
        self.assertNotEqual(r.returncode, 0)


class BlindTunnels(unittest.TestCase):
    def test_tls_route_is_a_blind_tunnel_and_the_workflow_sees_the_upstream_certificate(self):
        r = curl("-v", "-i", "--cacert", f"{ENV['pki']}/ca.pem", "https://status.example.com/",
                 env=harness.clean_env(https_proxy=ENV["url"]))
        self.assertIn("HTTP/1.1 200", r.stdout, r.stderr)
        self.assertIn("X-Client-Verify: NONE", r.stdout)
        self.assertIn("issuer: O=mtls-proxy test; CN=mtls-proxy test CA", r.stderr)
        self.assertNotIn("local CA", r.stderr)

    def test_mtls_route_without_interception_is_refused_with_both_fixes(self):
        sock = socket.create_connection(("127.0.0.1", ENV["ports"]["plain_proxy"]), timeout=5)
        sock.sendall(b"CONNECT api.mygreatbank.test:443 HTTP/1.1\r\nHost: api.mygreatbank.test:443\r\n\r\n")
        answer = b""
        while True:
            chunk = sock.recv(4096)
            if not chunk:
                break
            answer += chunk
        text = answer.decode()
        self.assertTrue(text.startswith("HTTP/1.1 403"), text)
        self.assertIn("use an http:// URL", text)
        self.assertIn("enable interception", text)

    def test_denied_host_and_unnamed_port(self):
        for target, fragment in [(b"evil.example:443", "denied by route[5] *"),
                                 (b"status.example.com:8443", "tunnels to port 8443 are refused unless a route names the port")]:
            sock = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=5)
            sock.sendall(b"CONNECT " + target + b" HTTP/1.1\r\nHost: x\r\n\r\n")
            text = sock.recv(4096).decode()
            self.assertTrue(text.startswith("HTTP/1.1 403"), text)
            self.assertIn(fragment, text)


class WebSocket(unittest.TestCase):
    def test_upgrade_over_the_mtls_upstream(self):
        sock = socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=5)
        key = base64.b64encode(os.urandom(16)).decode()
        sock.sendall((f"GET http://ws.mygreatbank.test/socket HTTP/1.1\r\nHost: ws.mygreatbank.test\r\nUpgrade: websocket\r\n"
                      f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
        head, rest = head.split(b"\r\n\r\n", 1)
        text = head.decode()
        self.assertTrue(text.startswith("HTTP/1.1 101 "), text)
        self.assertIn("X-Client-Subject: fusion-us", text)
        self.assertIn("Upgrade: websocket", text)
        self.assertIn("Connection: Upgrade", text)
        payload = os.urandom(200000)
        sock.sendall(payload)
        echoed = rest
        while len(echoed) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            echoed += chunk
        self.assertEqual(echoed, payload)
        sock.close()


if __name__ == "__main__":
    harness.run_suite()
