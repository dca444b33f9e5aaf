#!/usr/bin/env python3
"""Failing upstreams, with real sockets: each gives the documented status and Proxy-Status, the client
connection is closed when a response was cut short, and connection counts return to where they were."""
import json, os, re, socket, subprocess, sys, tempfile, time, unittest
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import Fixture, proxy_section, route, tear_down  # noqa: E402
import requests  # noqa: E402

ENV = {}


def setUpModule():
    with Fixture("mtls-proxy-faults-", ports=("proxy", "admin", "faulty", "expired", "notyet", "selfsigned", "tls11")) as fx:
        ports = fx.ports
        fx.dated_certificates(("expired", "expired.mygreatbank.test", -2592000, -86400, "server"),
                              ("notyet", "notyet.mygreatbank.test", 86400, 2592000, "server"))
        harness.pki_shell(
            "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout selfsigned.key -out selfsigned.pem"
            " -subj /CN=selfsigned.mygreatbank.test -addext subjectAltName=DNS:selfsigned.mygreatbank.test -days 30 2>/dev/null",
            cwd=fx.pki)
        for name, cert, extra in [("faulty", "server", []), ("expired", "expired", []), ("notyet", "notyet", []),
                                  ("selfsigned", "selfsigned", []), ("tls11", "server", ["--max-tls", "1.1"])]:
            fx.tls_script("faulty.py", name, *extra, cert=cert)
        routes = "".join("\n" + route(f"{name}.mygreatbank.test", identity="us", connect=ports[name])
                         for name in ("faulty", "expired", "notyet", "selfsigned", "tls11"))
        fx.proxy("proxy", "\n" + proxy_section(ports["proxy"], admin=ports["admin"]) + harness.US_IDENTITY + routes, wait=("admin",))
    ENV.update(fx.env(url=f"http://127.0.0.1:{ports['proxy']}"))


def tearDownModule():
    tear_down(ENV)


def get(host, path="/"):
    return requests.get(f"http://{host}.mygreatbank.test{path}", proxies={"http": ENV["url"]}, timeout=15)


def gauge(name):
    with urllib.request.urlopen(f"http://127.0.0.1:{ENV['ports']['admin']}/metrics", timeout=5) as r:
        text = r.read().decode()
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def curl_status(path):
    r = subprocess.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}", "-x", ENV["url"],
                        f"http://faulty.mygreatbank.test{path}"], capture_output=True, text=True, env=harness.clean_env())
    return r.returncode, r.stdout


class BeforeTheResponse(unittest.TestCase):
    def test_closed_after_the_request(self):
        r = get("faulty", "/close-after-request")
        self.assertEqual(r.status_code, 502)
        self.assertIn("error=connection_terminated", r.headers["Proxy-Status"])

    def test_garbage_instead_of_http(self):
        r = get("faulty", "/garbage")
        self.assertEqual(r.status_code, 502)
        self.assertIn("error=http_protocol_error", r.headers["Proxy-Status"])

    def test_upstream_certificates_that_must_be_refused(self):
        for host, reason in [("expired", "certificate has expired"), ("notyet", "certificate is not yet valid"),
                             ("selfsigned", "self-signed certificate")]:
            with self.subTest(host):
                r = get(host)
                self.assertEqual(r.status_code, 502)
                self.assertIn("error=tls_certificate_error", r.headers["Proxy-Status"])
                self.assertIn(reason, r.text)

    def test_upstream_offering_only_tls_1_0_and_1_1(self):
        r = get("tls11")
        self.assertEqual(r.status_code, 502)
        self.assertRegex(r.headers["Proxy-Status"], r"error=(tls_protocol_error|tls_alert_received)")
        self.assertRegex(r.text, r"protocol|version")


class DuringTheResponse(unittest.TestCase):
    def test_reset_in_the_middle_closes_the_client_connection(self):
        rc, out = curl_status("/reset-mid")
        self.assertNotEqual(rc, 0, out)  # curl sees a cut-short body
        self.assertTrue(out.startswith("200 "), out)
        self.assertLess(int(out.split()[1]), 100000)

    def test_truncated_chunked_body(self):
        rc, out = curl_status("/truncated-chunked")
        self.assertNotEqual(rc, 0)
        self.assertTrue(out.startswith("200 "), out)

    def test_response_longer_than_announced_is_cut_at_its_length(self):
        s = requests.Session()
        r = s.get("http://faulty.mygreatbank.test/too-long", proxies={"http": ENV["url"]}, timeout=10)
        self.assertEqual(r.content, b"hello")
        # The extra bytes never reach the next exchange: the connection they came on is not reused.
        r = s.get("http://faulty.mygreatbank.test/ok", proxies={"http": ENV["url"]}, timeout=10)
        self.assertEqual(r.content, b"fine\n")


class PooledConnectionClosedByTheUpstream(unittest.TestCase):
    def test_idempotent_request_is_retried_once_and_a_post_is_not(self):
        s = requests.Session()
        url = "http://faulty.mygreatbank.test/reuse-trap"
        self.assertEqual(s.get(url, proxies={"http": ENV["url"]}, timeout=10).status_code, 200)
        # The pooled connection is reused and the upstream closes it: a GET is retried on a new connection.
        self.assertEqual(s.get(url, proxies={"http": ENV["url"]}, timeout=10).status_code, 200)
        # A POST is not retried (it may have been processed): the client is told.
        r = s.post(url, data=b"once", proxies={"http": ENV["url"]}, timeout=10)
        self.assertEqual(r.status_code, 502)
        self.assertIn("error=connection_terminated", r.headers["Proxy-Status"])


class Leaks(unittest.TestCase):
    def test_connection_counts_return_to_baseline(self):
        time.sleep(0.5)
        base_clients = gauge("mtls_proxy_client_connections_active")
        base_upstreams = gauge("mtls_proxy_upstream_connections_active")
        for _ in range(3):
            for path in ("/close-after-request", "/garbage", "/reset-mid", "/truncated-chunked", "/too-long", "/ok"):
                curl_status(path)
            for host in ("expired", "selfsigned", "tls11"):
                get(host)
        time.sleep(1.0)
        self.assertEqual(gauge("mtls_proxy_client_connections_active"), base_clients)
        # Pooled connections may remain, but no more than one per upstream that answered properly.
        self.assertLessEqual(gauge("mtls_proxy_upstream_connections_active"), base_upstreams + 1)


if __name__ == "__main__":
    harness.run_suite()
