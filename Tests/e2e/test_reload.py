#!/usr/bin/env python3
"""Reload without dropping anything: while a stream of requests passes through the proxy, the config and the
certificate files are replaced several times (once with a broken file, once by swapping a symlinked folder the
way Kubernetes updates a secret), and SIGHUP is sent. No request may fail, and the upstream must see the new
identity after each swap."""
import os, shutil, signal, subprocess, sys, tempfile, threading, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from fixture import EU_KEYS, US_KEYS, Fixture, identity, proxy_section, route, upstream_section  # noqa: E402
import requests  # noqa: E402

ENV = {}


def config(upstream_port, proxy_port, cert_dir, cert_name, extra=""):
    return ("\n" + proxy_section(proxy_port, workers=2) + upstream_section() + identity("us", f"{cert_dir}/{cert_name}")
            + f"{extra}\n" + route("api.mygreatbank.test", identity="us", connect=upstream_port))


def atomic_write(path, text):
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Traffic(threading.Thread):
    """Sends requests back to back (half on one keep-alive session, half on new connections) and records
    every outcome."""

    def __init__(self, url):
        super().__init__(daemon=True)
        self.url = url
        self.stop = threading.Event()
        self.ok = 0
        self.failures = []
        self.subjects = []

    def run(self):
        session = requests.Session()
        i = 0
        while not self.stop.is_set():
            i += 1
            client = session if i % 2 else requests
            try:
                r = client.get("http://api.mygreatbank.test/whoami", proxies={"http": self.url}, timeout=10)
                if r.status_code == 200:
                    self.ok += 1
                    self.subjects.append((time.time(), r.headers["X-Client-Subject"]))
                else:
                    self.failures.append(f"{r.status_code} {r.text.strip()}")
            except Exception as e:  # noqa: BLE001
                self.failures.append(repr(e))

    def subject_after(self, t):
        later = [s for (when, s) in self.subjects if when > t]
        return later[-1] if later else None


class Reload(unittest.TestCase):
    def test_reloads_under_load_lose_no_request(self):
        with Fixture.temporary("mtls-proxy-reload-", ports=("up", "proxy")) as fx:
            d, up, proxy_port = fx.dir, fx.ports["up"], fx.ports["proxy"]
            # A secret folder mounted the Kubernetes way: secret -> ..data -> ..2026_1 (the real files).
            os.makedirs(f"{d}/secret/..v1")
            for ext in ("pem", "key"):
                shutil.copy(f"{d}/pki/fusion-us.{ext}", f"{d}/secret/..v1/tls.{ext}")
                os.symlink(f"..data/tls.{ext}", f"{d}/secret/tls.{ext}")
            os.symlink("..v1", f"{d}/secret/..data")
            fx.python_upstream("up", ca="ca", require=True)
            path = f"{d}/proxy.conf"
            atomic_write(path, config(up, proxy_port, "pki", "fusion-us"))
            proxy = fx.proxy("proxy")
            traffic = Traffic(f"http://127.0.0.1:{proxy_port}")
            traffic.start()

            def wait_for(subject, since, timeout=8):
                deadline = time.time() + timeout
                while time.time() < deadline:
                    if traffic.subject_after(since) == subject:
                        return True
                    time.sleep(0.1)
                return False

            time.sleep(1)
            # 1. The config now names another identity's files: picked up by the file watcher.
            t = time.time()
            atomic_write(path, config(up, proxy_port, "pki", "fusion-eu"))
            self.assertTrue(wait_for("fusion-eu", t), "config change not applied")
            # 2. A broken config: nothing changes, the error is logged, the old config keeps serving.
            t = time.time()
            atomic_write(path, config(up, proxy_port, "pki", "fusion-eu", extra="bogus_key = 1"))
            time.sleep(1.5)
            self.assertEqual(traffic.subject_after(t), "fusion-eu")
            # 3. Fixed, and pointing at the symlinked secret folder.
            t = time.time()
            atomic_write(path, config(up, proxy_port, "secret", "tls"))
            self.assertTrue(wait_for("fusion-us", t), "secret folder not applied")
            # 4. The secret is rotated by swapping the ..data symlink, as the kubelet does.
            os.makedirs(f"{d}/secret/..v2")
            for ext in ("pem", "key"):
                shutil.copy(f"{d}/pki/fusion-eu.{ext}", f"{d}/secret/..v2/tls.{ext}")
            os.symlink("..v2", f"{d}/secret/..data_tmp")
            t = time.time()
            os.replace(f"{d}/secret/..data_tmp", f"{d}/secret/..data")
            self.assertTrue(wait_for("fusion-eu", t), "symlink swap not applied")
            # 5. SIGHUP reloads even when nothing changed.
            os.kill(proxy.pid, signal.SIGHUP)
            time.sleep(1)
            traffic.stop.set()
            traffic.join(15)

            log = harness.read(f"{d}/proxy.log")
            print(f"\n  {traffic.ok} requests during 4 file changes and a SIGHUP; {len(traffic.failures)} failed", file=sys.stderr)
            self.assertEqual(traffic.failures, [])
            self.assertGreater(traffic.ok, 50)
            self.assertIn("reload (files changed) failed, still serving the previous config", log)
            self.assertIn("identities.us.bogus_key: unknown key", log)
            self.assertGreaterEqual(log.count("reloaded (files changed)"), 3)
            self.assertIn("reloaded (SIGHUP)", log)

    def test_a_large_table_is_swapped_whole(self):
        """20,000 routes: while the new table is read and compiled, requests are decided by the old one; then
        every request is decided by the new one. One worker, so the order of the answers is the order of the
        decisions: all "us" (the old table's last route), then all "eu" (the new one's), never a failure."""
        with Fixture.temporary("mtls-proxy-reload-large-", ports=("up", "proxy")) as fx:
            d, up, proxy_port = fx.dir, fx.ports["up"], fx.ports["proxy"]

            def table(identity):
                head = proxy_section(proxy_port) + upstream_section() + US_KEYS + EU_KEYS
                routes = [f'[[route]]\nhost = "*.zone{i}.mygreatbank.test"\naction = "deny"\n' if i % 10 == 9 else
                          f'[[route]]\nhost = "svc{i}.mygreatbank.test"\npath = "/api/v{i % 3}"\nidentity = "{identity}"\n'
                          for i in range(20_000)]
                routes.append(f'[[route]]\nhost = "api.mygreatbank.test"\npath = "/whoami/x"\naction = "deny"\n')
                routes.append(f'[[route]]\nhost = "api.mygreatbank.test"\nidentity = "{identity}"\nconnect = "127.0.0.1:{up}"\n')
                return head + "\n".join(routes)

            fx.python_upstream("up", ca="ca", require=True)
            path = f"{d}/proxy.conf"
            atomic_write(path, table("us"))
            proxy = fx.proxy("proxy")
            traffic = Traffic(f"http://127.0.0.1:{proxy_port}")
            traffic.start()
            time.sleep(0.5)
            atomic_write(path, table("eu"))
            deadline = time.time() + 30
            while time.time() < deadline and "reloaded (" not in harness.read(f"{d}/proxy.log"):
                time.sleep(0.1)
            time.sleep(0.5)
            traffic.stop.set()
            traffic.join(15)
            subjects = [s for (_, s) in traffic.subjects]
            print(f"\n  {len(subjects)} requests across the reload of 20,002 routes: "
                  f"{subjects.count('fusion-us')} us, {subjects.count('fusion-eu')} eu", file=sys.stderr)
            self.assertEqual(traffic.failures, [])
            self.assertIn("reloaded (files changed): 20002 route(s)", harness.read(f"{d}/proxy.log"))
            self.assertGreater(subjects.count("fusion-us"), 0)
            self.assertGreater(subjects.count("fusion-eu"), 0)
            switch = subjects.index("fusion-eu")
            self.assertEqual(set(subjects[:switch]), {"fusion-us"})
            self.assertEqual(set(subjects[switch:]), {"fusion-eu"}, "a request was decided by the old table after the new one")


    def test_sighup_during_start_up_is_not_fatal(self):
        """A reload signal that arrives while the proxy is still starting (reading a large config, binding its
        listeners, starting workers) must not end it: SIGHUP's default action is to terminate, and the loop's own
        handler is installed only when the main loop starts. Signals are sent from the moment the process is
        running until it serves."""
        with Fixture.temporary("mtls-proxy-reload-start-", ports=("up", "proxy")) as fx:
            d, procs, up, proxy_port = fx.dir, fx.procs, fx.ports["up"], fx.ports["proxy"]
            routes = "".join(f'[[route]]\nhost = "svc{i}.mygreatbank.test"\nidentity = "us"\n' for i in range(20_000))
            text = config(up, proxy_port, "pki", "fusion-us") + routes
            fx.python_upstream("up", ca="ca", require=True)
            path = f"{d}/proxy.conf"
            atomic_write(path, text)
            with open(f"{d}/proxy.log", "ab") as log:
                proxy = procs.start([harness.proxy_binary(), "run", "--config", path], stdout=log, stderr=subprocess.STDOUT)
            # Wait until the proxy has set up its process (it ignores SIGPIPE first thing), then signal until it
            # serves: every SIGHUP from then on lands while it reads the config, binds or starts its workers.
            deadline = time.time() + 30
            while time.time() < deadline and proxy.poll() is None:
                try:
                    with open(f"/proc/{proxy.pid}/status") as f:
                        ignored = int(next(l for l in f if l.startswith("SigIgn:")).split()[1], 16)
                    if ignored & (1 << (signal.SIGPIPE - 1)):
                        break
                except (OSError, StopIteration):
                    pass
                time.sleep(0.001)
            sent = 0
            serving = False
            while time.time() < deadline and proxy.poll() is None and not serving:
                os.kill(proxy.pid, signal.SIGHUP)
                sent += 1
                time.sleep(0.01)
                serving = "mtls-proxy listening on" in harness.read(f"{d}/proxy.log")
            for _ in range(5):
                if proxy.poll() is not None:
                    break
                os.kill(proxy.pid, signal.SIGHUP)
                time.sleep(0.05)
            self.assertIsNone(proxy.poll(), f"the proxy ended (exit {proxy.poll()}) after {sent} SIGHUP(s) during start-up:\n"
                              + harness.read(f"{d}/proxy.log")[-2000:])
            harness.wait_for_port(proxy_port)
            r = requests.get("http://api.mygreatbank.test/whoami", proxies={"http": f"http://127.0.0.1:{proxy_port}"}, timeout=10)
            self.assertEqual(r.status_code, 200)

class ReloadAskedForWhileStarting(unittest.TestCase):
    """Between binding its listeners (the port answers: supervisors and tests take the proxy as started) and
    arming its reload signal and file watcher, a proxy ignored SIGHUP and did not see the config change: the
    reload asked for in that moment was lost, silently. A debug build widens the moment on request
    (MTLS_PROXY_TEST_FAULT=slow-start: 2 s), so each way of asking lands in it."""

    def start(self, fx):
        fx.python_upstream("up", ca="ca", require=True)
        fx.write("proxy.conf", config(fx.ports["up"], fx.ports["proxy"], "pki", "fusion-us"))
        with open(fx.path("proxy.log"), "ab") as log:
            proxy = fx.procs.start([harness.proxy_binary(), "run", "--config", fx.path("proxy.conf")], stdout=log,
                                   stderr=subprocess.STDOUT, env=dict(os.environ, MTLS_PROXY_TEST_FAULT="slow-start"))
        harness.wait_for_port(fx.ports["proxy"])
        if "test fault on" not in harness.read(fx.path("proxy.log")):
            self.skipTest("this build ignores MTLS_PROXY_TEST_FAULT (a release build)")
        return proxy

    def subject(self, fx):
        r = requests.get("http://api.mygreatbank.test/whoami", proxies={"http": f"http://127.0.0.1:{fx.ports['proxy']}"},
                         timeout=10)
        self.assertEqual(r.status_code, 200, r.text)
        return r.headers["X-Client-Subject"]

    def test_a_sighup_while_starting_reloads_once_started(self):
        with Fixture.temporary("mtls-proxy-reload-early-hup-", ports=("up", "proxy")) as fx:
            proxy = self.start(fx)
            atomic_write(fx.path("proxy.conf"), config(fx.ports["up"], fx.ports["proxy"], "pki", "fusion-eu"))
            os.kill(proxy.pid, signal.SIGHUP)
            reloaded = harness.wait_until(lambda: "reloaded (SIGHUP" in harness.read(fx.path("proxy.log")), timeout=10, step=0.1)
            self.assertTrue(reloaded, harness.read(fx.path("proxy.log")))
            self.assertEqual(self.subject(fx), "fusion-eu")
            self.assertIsNone(proxy.poll())

    def test_a_config_changed_while_starting_is_picked_up(self):
        with Fixture.temporary("mtls-proxy-reload-early-change-", ports=("up", "proxy")) as fx:
            proxy = self.start(fx)
            atomic_write(fx.path("proxy.conf"), config(fx.ports["up"], fx.ports["proxy"], "pki", "fusion-eu"))
            reloaded = harness.wait_until(lambda: "reloaded (files changed" in harness.read(fx.path("proxy.log")),
                                          timeout=10, step=0.1)
            self.assertTrue(reloaded, harness.read(fx.path("proxy.log")))
            self.assertEqual(self.subject(fx), "fusion-eu")
            self.assertIsNone(proxy.poll())


if __name__ == "__main__":
    harness.run_suite()
