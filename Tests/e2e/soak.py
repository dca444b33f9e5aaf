#!/usr/bin/env python3
"""The soak run behind scripts/soak (see there). Exits non-zero when a request failed that was not an injected
fault, or when memory or descriptors did not come back within tolerance."""
import os, random, sys, tempfile, threading, time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import requests  # noqa: E402

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 300
MAX_REQUESTS = int(sys.argv[2]) if len(sys.argv) > 2 else 200000
RSS_TOLERANCE_KIB = 16 * 1024
FD_TOLERANCE = 8


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def main():
    d = tempfile.mkdtemp(prefix="mtls-proxy-soak-")
    harness.make_pki(f"{d}/pki")
    procs = harness.Processes()
    ports = {k: harness.free_port() for k in ("proxy", "admin", "files", "faulty")}
    stats = {"sent": 0, "ok": 0, "injected": 0, "failed": 0, "reloads": 0}
    failures = []
    lock = threading.Lock()
    try:
        harness.start_python_upstream(procs, f"{d}/pki", ports["files"], ca="ca", require=True)
        procs.start([sys.executable, os.path.join(harness.HERE, "faulty.py"), "--port", str(ports["faulty"]),
                     "--cert", f"{d}/pki/server.pem", "--key", f"{d}/pki/server.key", "--ca", f"{d}/pki/ca.pem"])
        harness.wait_for_port(ports["faulty"])

        def config(variant):
            extra = f'\n[[route]]\nhost = "extra{variant}.mygreatbank.test"\naction = "deny"\n'
            return f"""
[proxy]
listen = "127.0.0.1:{ports['proxy']}"
workers = 2
[admin]
listen = "127.0.0.1:{ports['admin']}"
[log]
access = "off"
[upstream]
ca_file = "pki/ca.pem"
[identities.us]
cert = "pki/fusion-us.pem"
key = "pki/fusion-us.key"
[identities.eu]
cert = "pki/fusion-eu.pem"
key = "pki/fusion-eu.key"
[[route]]
host = "us.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{ports['files']}"
[[route]]
host = "eu.mygreatbank.test"
identity = "eu"
connect = "127.0.0.1:{ports['files']}"
[[route]]
host = "faulty.mygreatbank.test"
identity = "us"
connect = "127.0.0.1:{ports['faulty']}"
{extra}"""

        path = f"{d}/proxy.conf"
        with open(path, "w") as f:
            f.write(config(0))
        proxy = harness.start_proxy(procs, path, f"{d}/proxy.log", ports["proxy"])
        url = {"http": f"http://127.0.0.1:{ports['proxy']}"}
        upload = os.urandom(512 * 1024)

        def one(session, kind):
            identity = random.choice(["us", "eu"])
            base = f"http://{identity}.mygreatbank.test"
            client = session if kind != "new" else requests
            if kind == "fault":
                r = client.get(f"http://faulty.mygreatbank.test{random.choice(['/close-after-request', '/garbage'])}", proxies=url, timeout=30)
                return "injected" if r.status_code == 502 else f"fault answered {r.status_code}"
            if kind == "download":
                r = client.get(f"{base}/download?size=1048576", proxies=url, timeout=30)
                ok = r.status_code == 200 and len(r.content) == 1048576
            elif kind == "upload":
                r = client.post(f"{base}/echo", data=upload, proxies=url, timeout=30)
                ok = r.status_code == 200 and r.text.startswith(f"{len(upload)} ")
            else:
                r = client.get(f"{base}/whoami", proxies=url, timeout=30)
                ok = r.status_code == 200 and r.headers.get("X-Client-Subject") == f"fusion-{identity}"
            return "ok" if ok else f"{kind} {identity}: {r.status_code} {r.text[:80]!r}"

        deadline = time.time() + SECONDS
        warm = requests.Session()
        for _ in range(50):
            one(warm, "small")
        time.sleep(1)
        start_rss, start_fds = harness.rss_kib(proxy.pid), fds(proxy.pid)

        def load():
            session = requests.Session()
            while time.time() < deadline:
                with lock:
                    if stats["sent"] >= MAX_REQUESTS:
                        return
                    stats["sent"] += 1
                kind = random.choices(["small", "new", "download", "upload", "fault"], weights=[55, 20, 10, 10, 5])[0]
                try:
                    outcome = one(session, kind)
                except Exception as e:  # noqa: BLE001
                    outcome = f"{kind}: {e!r}"
                with lock:
                    if outcome in ("ok", "injected"):
                        stats[outcome] += 1
                    else:
                        stats["failed"] += 1
                        failures.append(outcome)

        threads = [threading.Thread(target=load) for _ in range(6)]
        for t in threads:
            t.start()
        variant = 0
        while any(t.is_alive() for t in threads):
            time.sleep(3)
            variant += 1
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(config(variant % 2))
            os.replace(tmp, path)
            stats["reloads"] += 1
        for t in threads:
            t.join()
        requests.Session().close()
        time.sleep(3)  # pooled connections stay; client connections close
        end_rss, end_fds = harness.rss_kib(proxy.pid), fds(proxy.pid)
        alive = proxy.poll() is None
    finally:
        procs.stop_all()
    leftover = [p for p in procs.procs if p.poll() is None]
    print(f"soak: {SECONDS} s, 6 clients, {stats['sent']} requests: {stats['ok']} ok, {stats['injected']} injected faults "
          f"answered 502, {stats['failed']} failed; {stats['reloads']} config reloads")
    print(f"proxy RSS {start_rss} KiB -> {end_rss} KiB ({end_rss - start_rss:+d} KiB, tolerance {RSS_TOLERANCE_KIB} KiB); "
          f"open descriptors {start_fds} -> {end_fds} (tolerance +{FD_TOLERANCE}); proxy alive at the end: {alive}; "
          f"processes left behind: {len(leftover)}")
    for f in failures[:10]:
        print("  failure:", f)
    bad = stats["failed"] > 0 or end_rss - start_rss > RSS_TOLERANCE_KIB or end_fds - start_fds > FD_TOLERANCE or not alive or leftover
    print(f"{stats['ok'] + stats['injected']} passed, {stats['failed']} failed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
