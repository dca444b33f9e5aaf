#!/usr/bin/env python3
"""The status page (`GET /` on the admin listener) and `certs --html`, in a real browser: headless Chromium
(Debian's chromium and chromium-driver, driven by Selenium) loads the page of a running proxy with three
identities (one with a staged certificate, one inside the warning window, one with only a future certificate),
with markup in a route name, a certificate subject and an upstream's error text. Checked: no console error (so
the Content-Security-Policy let the page's own style through and nothing else was tried), no network request but
the page itself, one timeline mark per certificate with its dates, the staged takeover, the failing route after a
forced upstream failure, the markup shown as text; the HTML parses strictly (html5lib); `certs --html` is the same
page without its live parts. A screenshot is saved to a temporary folder, its path printed.

Chromium is kept on loopback: every other host resolves to nothing and goes to a dead loopback proxy."""
import os, re, shutil, signal, socket, subprocess, sys, tempfile, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import Fixture, certificates, identity, proxy_section, route, tear_down, upstream_section  # noqa: E402

ENV = {}
DAY = 86400
EVIL_SUBJECT_CN = '<script>alert(1)</script> & "q"'
EVIL_ROUTE = '<img src=x onerror=alert(2)>'

try:
    import html5lib
except ImportError:
    html5lib = None
try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
except ImportError:
    webdriver = None

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")


def browser_missing():
    if webdriver is None:
        return "selenium (PyPI) is not installed"
    if not CHROMIUM or not CHROMEDRIVER:
        return "Debian's chromium and chromium-driver are not installed"
    return None


def setUpModule():
    fx = Fixture("mtls-proxy-status-", ports=("proxy", "admin", "up", "rejecting", "closed"))
    ENV.update(fx.env())
    pki, ports = fx.pki, fx.ports
    # Ends half a day off whole days, so that "days left" is the same for pages rendered seconds apart.
    half = DAY // 2
    fx.dated_certificates(("rot-a", EVIL_SUBJECT_CN.replace("/", "\\/"), -100 * DAY, 20 * DAY + half),  # / escaped for openssl -subj
                          ("rot-b", "fusion-rot-next", 10 * DAY, 375 * DAY + half),
                          ("soon", "fusion-soon", -300 * DAY, 12 * DAY + half),
                          ("later", "fusion-later", 5 * DAY, 90 * DAY + half))
    with fx:
        fx.python_upstream("up", ca="ca", require=True)
        # An upstream that trusts another CA: it rejects the client certificate, and the proxy's Proxy-Status
        # names the certificate it presented, markup in its subject included.
        fx.python_upstream("rejecting", ca="rogue-ca", require=True)
        config = ("\n" + proxy_section(ports["proxy"], workers=2, warn_days=30, admin=ports["admin"]) + upstream_section()
                  + certificates("rotating", "pki/rot-a", "pki/rot-b")
                  + identity("expiring", "pki/soon") + identity("future", "pki/later")
                  + route("api.mygreatbank.test", name=EVIL_ROUTE, identity="rotating", connect=ports["up"])
                  + route("rejecting.mygreatbank.test", name="rejected", identity="rotating", connect=ports["rejecting"])
                  + route("down.mygreatbank.test", name="down", identity="expiring", connect=ports["closed"])
                  + route("later.mygreatbank.test", name="later", identity="future", connect=ports["up"]))
        ENV["config"] = fx.write("proxy.conf", config)
        ENV["proxy"] = fx.proxy("proxy", wait=("admin",))


def tearDownModule():
    tear_down(ENV, remove=True)


def through_proxy(host, path="/whoami", headers=""):
    """One request through the proxy; returns the status code and the Proxy-Status header (or None)."""
    with socket.create_connection(("127.0.0.1", ENV["ports"]["proxy"]), timeout=10) as s:
        s.sendall(f"GET http://{host}{path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head = data.split(b"\r\n\r\n", 1)[0].decode("latin-1")
    status = int(head.split(" ", 2)[1])
    m = re.search(r"^Proxy-Status: (.*)$", head, re.M | re.I)
    return status, (m.group(1).strip() if m else None)


def page():
    """The admin page (status, headers, body), after the page's one-second cache has turned over."""
    import urllib.request
    time.sleep(1.1)
    with urllib.request.urlopen(f"http://127.0.0.1:{ENV['ports']['admin']}/", timeout=5) as r:
        return r.status, dict(r.headers), r.read().decode()


def strict_parse(html):
    return html5lib.HTMLParser(strict=True, namespaceHTMLElements=False).parse(html)


def without_live_parts(html):
    html = re.sub(r"<!--live-->.*?<!--/live-->", "", html, flags=re.S)
    html = re.sub(r'<time data-volatile="generated"[^>]*>[^<]*</time>', "<time/>", html)
    html = re.sub(r'<g class="today-mark".*?</g>', "", html)
    return html.replace(" · offline report (no live figures)", "")


class StatusPageHTTP(unittest.TestCase):
    """The page as served, without a browser."""

    def test_served_with_a_strict_policy_and_nothing_secret(self):
        status, headers, body = page()
        self.assertEqual(status, 200)
        self.assertTrue(headers["Content-Type"].startswith("text/html"))
        policy = headers["Content-Security-Policy"]
        self.assertRegex(policy, r"^default-src 'none'; style-src 'sha256-[A-Za-z0-9+/]+=*'")
        self.assertIn("frame-ancestors 'none'", policy)
        self.assertNotIn("script-src", policy)
        self.assertEqual(headers["X-Content-Type-Options"], "nosniff")
        self.assertNotIn("<script", body)
        self.assertNotRegex(body, r"\s(src|href|action)\s*=\s*[\"']")  # no resource, link or form at all
        self.assertNotIn("BEGIN", body)  # no PEM, let alone a key
        for who in ("rotating", "expiring", "future"):
            self.assertIn(f'data-identity="{who}"', body)

    def test_html_is_well_formed_under_a_strict_parser(self):
        if html5lib is None:
            self.skipTest("html5lib (PyPI) is not installed")
        _, _, body = page()
        strict_parse(body)  # raises on any parse error
        offline = harness.run_cli("certs", "--html", "--config", ENV["config"], timeout=30)
        self.assertEqual(offline.returncode, 0, offline.stderr)
        strict_parse(offline.stdout)

    def test_certs_html_is_the_same_page_without_live_figures(self):
        offline = harness.run_cli("certs", "--html", "--config", ENV["config"], timeout=30)
        self.assertEqual(offline.returncode, 0, offline.stderr)
        _, _, live = page()
        self.assertIn('id="process"', live)
        self.assertNotIn('id="process"', offline.stdout)
        self.assertNotIn("<!--live-->", offline.stdout)
        self.assertNotIn('http-equiv="refresh"', offline.stdout)
        self.assertEqual(without_live_parts(live), without_live_parts(offline.stdout))
        both = harness.run_cli("certs", "--html", "--ics", "--config", ENV["config"], timeout=30)
        self.assertNotEqual(both.returncode, 0)
        self.assertIn("alternatives", both.stderr)
        one = harness.run_cli("certs", "rotating", "--html", "--config", ENV["config"], timeout=30)
        self.assertNotEqual(one.returncode, 0)
        self.assertIn("every identity", one.stderr)

    def test_markup_in_route_name_subject_and_upstream_error_is_text(self):
        status, proxy_status = through_proxy("rejecting.mygreatbank.test")
        self.assertEqual(status, 502)
        # The upstream's error names the certificate presented, markup and all (RFC 2253 puts a backslash before
        # < and >, the Structured Field string doubles it).
        self.assertIn("<script", proxy_status or "")
        _, _, body = page()
        self.assertNotIn("<script>alert(1)", body)
        self.assertNotIn("<img src=x", body)
        self.assertIn("&lt;img src=x onerror=alert(2)&gt;", body)
        self.assertIn("&lt;script\\&gt;alert(1)\\&lt;/script\\&gt; &amp; ", body)
        row = re.search(r'<tr class="route" data-route="rejected".*?</tr>', body, re.S).group(0)
        self.assertIn("last-failure", row)
        self.assertIn("&lt;script", row)
        self.assertIn("error=tls_alert_received", row)

    def test_no_query_string_or_header_value_of_a_failing_request(self):
        status, _ = through_proxy("down.mygreatbank.test", "/pay?token=hunter2-query",
                                  headers="Authorization: Bearer hunter2-header\r\nX-Api-Key: hunter2-key\r\n")
        self.assertEqual(status, 502)
        _, _, body = page()
        self.assertIn('data-route="down"', body)
        self.assertIn("error=connection_refused", body)
        self.assertNotIn("hunter2", body)
        self.assertNotIn("/pay", body)

    def test_a_failed_reload_is_listed_with_its_first_error_as_text(self):
        good = harness.read(ENV["config"])
        try:
            harness.write_file(ENV["config"], good.replace('workers = 2', 'workers = 2\nunmatched = "<b>nope</b>"'))
            os.kill(ENV["proxy"].pid, signal.SIGHUP)
            deadline = time.time() + 10
            body = ""
            while time.time() < deadline and 'data-success="false"' not in body:
                _, _, body = page()
        finally:
            harness.write_file(ENV["config"], good)
        row = re.search(r'<tr data-success="false">.*?</tr>', body, re.S)
        self.assertIsNotNone(row, "no failed reload on the page")
        self.assertIn("unmatched", row.group(0))
        self.assertIn("&lt;b&gt;nope&lt;/b&gt;", row.group(0))
        self.assertNotIn("<b>nope", body)

    def test_only_get_and_head(self):
        import urllib.request, urllib.error
        req = urllib.request.Request(f"http://127.0.0.1:{ENV['ports']['admin']}/", data=b"x", method="POST")
        with self.assertRaises(urllib.error.HTTPError) as caught:
            urllib.request.urlopen(req, timeout=5)
        self.assertIn(caught.exception.code, (405, 501))  # libevent's answer to a method it was told to refuse


@unittest.skipIf(browser_missing(), browser_missing() or "")
class StatusPageInChromium(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.profile = tempfile.mkdtemp(prefix="mtls-proxy-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                    f"--user-data-dir={cls.profile}", "--window-size=1280,900", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync",
                    "--disable-default-apps", "--disable-extensions", "--no-pings", "--disable-domain-reliability",
                    "--disable-client-side-phishing-detection", "--metrics-recording-only",
                    # Loopback only: no name resolves but 127.0.0.1, and anything else would go to a dead proxy.
                    "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
                    "--proxy-server=http://127.0.0.1:9", "--proxy-bypass-list=127.0.0.1"):
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not look for a driver online
        cls.driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
        cls.url = f"http://127.0.0.1:{ENV['ports']['admin']}/"

    @classmethod
    def tearDownClass(cls):
        cls.driver.quit()
        shutil.rmtree(cls.profile, ignore_errors=True)

    def load(self):
        time.sleep(1.1)  # past the page's one-second cache
        self.driver.get_log("performance")  # drop what came before
        self.driver.get_log("browser")
        self.driver.get(self.url)
        return self.driver

    def marks(self, identity):
        return self.driver.execute_script("""
            return Array.from(document.querySelectorAll(`.identity[data-identity="${arguments[0]}"] svg g.mark`))
                .map(g => Object.assign({}, g.dataset, {title: g.querySelector('title').textContent}));""", identity)

    def test_page_in_chromium(self):
        # A forced upstream failure first: nothing listens where route "down" dials.
        status, proxy_status = through_proxy("down.mygreatbank.test")
        self.assertEqual(status, 502)
        self.assertIn("error=", proxy_status)
        self.assertEqual(through_proxy("api.mygreatbank.test")[0], 200)
        driver = self.load()

        errors = [e for e in driver.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
        self.assertEqual(errors, [], "console errors or warnings")
        import json
        requested = []
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message["method"] == "Network.requestWillBeSent":
                params = message["params"]
                requested.append((params["request"]["url"], params.get("documentURL")))
        # Requests made for the page (its navigation, and any resource it would load): the page alone. Chromium's
        # own pages (chrome://, the blank tab it starts with) may load their resources at the same time; those
        # are not the page's, and never leave the browser.
        self.assertEqual([u for u, d in requested if d == self.url], [self.url], "requests other than the page itself")
        self.assertEqual([u for u, d in requested if d != self.url and not u.startswith("chrome:")], [])
        resources = driver.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
        self.assertEqual(resources, [])
        # The page's own style applied (the policy's hash matched): the body is not the browser's default serif.
        font = driver.execute_script("return getComputedStyle(document.body).fontFamily")
        self.assertIn("system-ui", font)

        rotating = self.marks("rotating")
        self.assertEqual(len(rotating), 2)
        self.assertEqual([m["state"] for m in rotating], ["active", "next"])
        self.assertEqual(rotating[1]["notBefore"], rotating[1]["takesOverAt"])
        expected_takeover = time.time() + 10 * DAY
        takeover = time.mktime(time.strptime(rotating[1]["takesOverAt"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        self.assertLess(abs(takeover - expected_takeover), 120)
        self.assertIn("<script\\>alert(1)", rotating[0]["title"])  # the subject's markup shown as text, on hover
        takeovers = driver.execute_script(
            "return Array.from(document.querySelectorAll('.identity[data-identity=rotating] .takeover-mark')).map(g => g.dataset.at)")
        self.assertEqual(takeovers, [rotating[1]["takesOverAt"]])
        self.assertIn("takes over", driver.find_element("css selector", '.identity[data-identity="rotating"]').text)

        expiring = self.marks("expiring")
        self.assertEqual(len(expiring), 1)
        self.assertIn(expiring[0]["daysLeft"], ("11", "12"))
        card = driver.find_element("css selector", '.identity[data-identity="expiring"]')
        self.assertEqual(card.get_attribute("data-health"), "expiring_without_successor")
        self.assertIn("expiring, no successor staged", card.text)

        future = self.marks("future")
        self.assertEqual(len(future), 1)
        self.assertEqual(future[0]["state"], "next")
        card = driver.find_element("css selector", '.identity[data-identity="future"]')
        self.assertEqual(card.get_attribute("data-health"), "no_valid_certificate")
        self.assertIn("holds readiness back", card.text)

        # The failing route, with its Proxy-Status; the script in the route name did not run, it is text.
        down = driver.find_element("css selector", 'tr.route[data-route="down"]')
        self.assertEqual(down.find_element("css selector", ".last-failure").get_attribute("data-status"), "502")
        self.assertIn(proxy_status.split(";")[1].strip(), down.text)
        self.assertGreaterEqual(int(down.find_element("css selector", "[data-errors]").get_attribute("data-errors")), 1)
        evil = driver.execute_script("return document.querySelector('tr.route[data-index=\"1\"] td').textContent")
        self.assertEqual(evil, EVIL_ROUTE)
        self.assertEqual(driver.execute_script("return document.querySelectorAll('img, script').length"), 0)

        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1280, min(height + 40, 4000))
        shot = os.path.join(tempfile.mkdtemp(prefix="mtls-proxy-status-shot-"), "status-page.png")
        driver.save_screenshot(shot)
        print(f"\nscreenshot: {shot}", flush=True)
        self.assertGreater(os.path.getsize(shot), 10_000)


if __name__ == "__main__":
    harness.run_suite()
