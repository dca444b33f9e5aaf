#!/usr/bin/env python3
"""Reload without dropping anything: while a stream of requests passes through the proxy, the config and the
certificate files are replaced several times (once with a broken file, once by swapping a symlinked folder the
way Kubernetes updates a secret), and SIGHUP is sent. No request may fail, and the upstream must see the new
identity after each swap."""
import os, shutil, signal, subprocess, sys, tempfile, threading, time, unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import requests  # noqa: E402

ENV = {}


def config(upstream_port, proxy_port, cert_dir, cert_name, extra=""):
    return f"""
[proxy]
listen = "127.0.0.1:{proxy_port}"
workers = 2
[upstream]
ca_file = "pki/ca.pem"
[identities.us]
cert = "{cert_dir}/{cert_name}.pem"
key = "{cert_dir}/{cert_name}.key"
{extra}
[[route]]
host = "api.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{upstream_port}"
"""


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
        d = tempfile.mkdtemp(prefix="mtls-proxy-reload-")
        harness.make_pki(f"{d}/pki")
        # A secret folder mounted the Kubernetes way: secret -> ..data -> ..2026_1 (the real files).
        os.makedirs(f"{d}/secret/..v1")
        for ext in ("pem", "key"):
            shutil.copy(f"{d}/pki/fusion-us.{ext}", f"{d}/secret/..v1/tls.{ext}")
            os.symlink(f"..data/tls.{ext}", f"{d}/secret/tls.{ext}")
        os.symlink("..v1", f"{d}/secret/..data")
        procs = harness.Processes()
        up, proxy_port = harness.free_port(), harness.free_port()
        try:
            harness.start_python_upstream(procs, f"{d}/pki", up, ca="ca", require=True)
            path = f"{d}/proxy.conf"
            atomic_write(path, config(up, proxy_port, "pki", "fusion-us"))
            proxy = harness.start_proxy(procs, path, f"{d}/proxy.log", proxy_port)
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
        finally:
            procs.stop_all()

    def test_a_large_table_is_swapped_whole(self):
        """20,000 routes: while the new table is read and compiled, requests are decided by the old one; then
        every request is decided by the new one. One worker, so the order of the answers is the order of the
        decisions: all "us" (the old table's last route), then all "eu" (the new one's), never a failure."""
        d = tempfile.mkdtemp(prefix="mtls-proxy-reload-large-")
        harness.make_pki(f"{d}/pki")
        procs = harness.Processes()
        up, proxy_port = harness.free_port(), harness.free_port()

        def table(identity):
            head = f"""[proxy]
listen = "127.0.0.1:{proxy_port}"
workers = 1
[upstream]
ca_file = "pki/ca.pem"
[identities.us]
cert = "pki/fusion-us.pem"
key = "pki/fusion-us.key"
[identities.eu]
cert = "pki/fusion-eu.pem"
key = "pki/fusion-eu.key"
"""
            routes = [f'[[route]]\nhost = "*.zone{i}.mygreatbank.test"\naction = "deny"\n' if i % 10 == 9 else
                      f'[[route]]\nhost = "svc{i}.mygreatbank.test"\npath = "/api/v{i % 3}"\nidentity = "{identity}"\n'
                      for i in range(20_000)]
            routes.append(f'[[route]]\nhost = "api.mygreatbank.test"\npath = "/whoami/x"\naction = "deny"\n')
            routes.append(f'[[route]]\nhost = "api.mygreatbank.test"\nidentity = "{identity}"\nconnect = "127.0.0.1:{up}"\n')
            return head + "\n".join(routes)

        try:
            harness.start_python_upstream(procs, f"{d}/pki", up, ca="ca", require=True)
            path = f"{d}/proxy.conf"
            atomic_write(path, table("us"))
            proxy = harness.start_proxy(procs, path, f"{d}/proxy.log", proxy_port)
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
        finally:
            procs.stop_all()


if __name__ == "__main__":
    harness.run_suite()
