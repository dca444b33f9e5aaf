#!/usr/bin/env python3
"""The soak run behind scripts/soak (see there). Exits non-zero when a request failed that was not an injected
fault, when an admin scrape failed, or when memory or descriptors did not come back within tolerance.

Phases: (1) mixed traffic with proxy authentication, wrong passwords arriving from another loopback address, an
admin scrape loop, and a config change every few seconds; (2) RELOADS reloads (SIGHUP) in a row, cycling through
two valid configs and three failing ones (a TOML syntax error, a bad value, a key file that does not exist),
with the scrape loop and light traffic going on; (3) a few reloads of config texts never seen before, to show
what one parse costs (TOMLKit never frees a parsed document)."""
import base64, hashlib, os, random, signal, socket, sys, tempfile, threading, time, urllib.error, urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
import requests  # noqa: E402

SECONDS = int(sys.argv[1]) if len(sys.argv) > 1 else 300
MAX_REQUESTS = int(sys.argv[2]) if len(sys.argv) > 2 else 200000
RELOADS = int(sys.argv[3]) if len(sys.argv) > 3 else 2000
DISTINCT = 50
RSS_TOLERANCE_KIB = 16 * 1024
RELOAD_RSS_TOLERANCE_KIB = 8 * 1024
FD_TOLERANCE = 8


def fds(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def main():
    d = tempfile.mkdtemp(prefix="mtls-proxy-soak-")
    harness.make_pki(f"{d}/pki")
    procs = harness.Processes()
    ports = {k: harness.free_port() for k in ("proxy", "admin", "files", "faulty")}
    stats = {"sent": 0, "ok": 0, "injected": 0, "failed": 0, "reloads": 0, "bad_auth": 0, "bad_auth_unexpected": 0,
             "scrapes": 0, "scrape_failures": 0}
    failures = []
    lock = threading.Lock()
    try:
        harness.start_python_upstream(procs, f"{d}/pki", ports["files"], ca="ca", require=True)
        procs.start([sys.executable, os.path.join(harness.HERE, "faulty.py"), "--port", str(ports["faulty"]),
                     "--cert", f"{d}/pki/server.pem", "--key", f"{d}/pki/server.key", "--ca", f"{d}/pki/ca.pem"])
        harness.wait_for_port(ports["faulty"])

        carol_hash = harness.bcrypt_hash("carol-pw", 10)
        carol = f"carol:{carol_hash}\n" if carol_hash else ""
        with open(f"{d}/users", "w") as f:
            f.write(f"bob:sha256:{hashlib.sha256(b'bob-pw').hexdigest()}\n" + carol)

        def config(variant, broken=None):
            extra = f'\n[[route]]\nhost = "extra{variant}.mygreatbank.test"\naction = "deny"\n'
            key = "pki/fusion-us.key"
            workers = "2"
            if broken == "syntax":
                extra += '\n[[route]]\nhost = "unterminated\n'
            elif broken == "value":
                workers = '"many"'
            elif broken == "missing-key":
                key = "pki/no-such.key"
            return f"""
[proxy]
listen = "127.0.0.1:{ports['proxy']}"
workers = {workers}
auth_file = "users"
[admin]
listen = "127.0.0.1:{ports['admin']}"
[log]
access = "off"
[upstream]
ca_file = "pki/ca.pem"
[identities.us]
cert = "pki/fusion-us.pem"
key = "{key}"
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
        users = ["bob:bob-pw"] + (["carol:carol-pw"] if carol else [])
        url = {"http": f"http://{random.choice(users)}@127.0.0.1:{ports['proxy']}"}
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
        stop_side = threading.Event()

        def scrape():
            while not stop_side.is_set():
                for path in ("/metrics", "/healthz", "/readyz"):
                    try:
                        with urllib.request.urlopen(f"http://127.0.0.1:{ports['admin']}{path}", timeout=10) as r:
                            ok = r.status == 200
                    except Exception:  # noqa: BLE001
                        ok = False
                    with lock:
                        stats["scrapes"] += 1
                        stats["scrape_failures"] += 0 if ok else 1
                time.sleep(0.2)

        def bad_credentials():
            i = 0
            while not stop_side.is_set():
                i += 1
                user = random.choice(["bob", "carol", "mallory"])
                token = base64.b64encode(f"{user}:wrong-{i}".encode()).decode()
                try:
                    s = socket.create_connection(("127.0.0.1", ports["proxy"]), timeout=30, source_address=("127.0.0.2", 0))
                    s.sendall(f"GET http://us.mygreatbank.test/whoami HTTP/1.1\r\nHost: us.mygreatbank.test\r\n"
                              f"Proxy-Authorization: Basic {token}\r\nConnection: close\r\n\r\n".encode())
                    status = int(s.recv(64).split(b" ")[1])
                    s.close()
                except Exception:  # noqa: BLE001
                    status = 0
                with lock:
                    stats["bad_auth"] += 1
                    stats["bad_auth_unexpected"] += 0 if status in (407, 429) else 1
                time.sleep(0.05)

        side = [threading.Thread(target=scrape), threading.Thread(target=bad_credentials)]
        for t in side:
            t.start()

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

        # Phase 2: reloads in a row, valid and failing, while the scrape loop and light traffic go on.
        log_path = f"{d}/proxy.log"
        offset = [os.path.getsize(log_path)]

        def reload_outcomes():
            with open(log_path, "rb") as f:
                f.seek(offset[0])
                text = f.read().decode("utf-8", "replace")
            return text.count("reloaded (") + text.count("failed, still serving the previous config")

        def reload_with(text):
            tmp = path + ".tmp"
            with open(tmp, "w") as f:
                f.write(text)
            os.replace(tmp, path)
            before = reload_outcomes()
            proxy.send_signal(signal.SIGHUP)
            deadline_one = time.time() + 30
            while reload_outcomes() <= before and time.time() < deadline_one:
                time.sleep(0.005)

        light_stop = threading.Event()
        light = {"ok": 0, "failed": 0}

        def light_traffic():
            session = requests.Session()
            while not light_stop.is_set():
                try:
                    r = session.get("http://eu.mygreatbank.test/whoami", proxies=url, timeout=30)
                    light["ok" if r.status_code == 200 else "failed"] += 1
                except Exception:  # noqa: BLE001
                    light["failed"] += 1
                time.sleep(0.05)

        lt = threading.Thread(target=light_traffic)
        lt.start()
        cycle = [(0, None), (1, None), (0, "syntax"), (1, "value"), (0, "missing-key")]
        for i in range(10):  # warm-up: every text parsed once
            reload_with(config(*cycle[i % len(cycle)]))
        time.sleep(1)
        reload_rss_before, reload_fds_before = harness.rss_kib(proxy.pid), fds(proxy.pid)
        reload_started = time.time()
        for i in range(RELOADS):
            reload_with(config(*cycle[i % len(cycle)]))
        reload_seconds = time.time() - reload_started
        time.sleep(1)
        reload_rss_after, reload_fds_after = harness.rss_kib(proxy.pid), fds(proxy.pid)
        # Phase 3: texts never seen before (a comment changes), to measure one parse.
        distinct_before = harness.rss_kib(proxy.pid)
        for i in range(DISTINCT):
            reload_with(config(0) + f"\n# distinct {i}\n")
        time.sleep(1)
        distinct_after = harness.rss_kib(proxy.pid)
        light_stop.set()
        lt.join(30)
        stop_side.set()
        for t in side:
            t.join(30)
        with open(log_path, "rb") as f:
            f.seek(offset[0])
            text = f.read().decode("utf-8", "replace")
        reloads_ok, reloads_failed = text.count("reloaded ("), text.count("failed, still serving the previous config")
        alive = proxy.poll() is None
    finally:
        procs.stop_all()
    leftover = [p for p in procs.procs if p.poll() is None]
    print(f"soak: {SECONDS} s, 6 clients, {stats['sent']} requests: {stats['ok']} ok, {stats['injected']} injected faults "
          f"answered 502, {stats['failed']} failed; {stats['reloads']} config reloads")
    print(f"proxy RSS {start_rss} KiB -> {end_rss} KiB ({end_rss - start_rss:+d} KiB, tolerance {RSS_TOLERANCE_KIB} KiB); "
          f"open descriptors {start_fds} -> {end_fds} (tolerance +{FD_TOLERANCE}); proxy alive at the end: {alive}; "
          f"processes left behind: {len(leftover)}")
    print(f"admin scrape loop: {stats['scrapes']} scrapes, {stats['scrape_failures']} failed; wrong credentials from 127.0.0.2: "
          f"{stats['bad_auth']} sent, {stats['bad_auth_unexpected']} not answered 407/429")
    print(f"reloads: {RELOADS} in a row in {reload_seconds:.0f} s (2 valid configs, 3 failing: syntax, value, missing key; "
          f"{reloads_ok} reloaded and {reloads_failed} refused in total, warm-up and phase 3 included); "
          f"RSS {reload_rss_before} KiB -> {reload_rss_after} KiB ({reload_rss_after - reload_rss_before:+d} KiB, "
          f"tolerance {RELOAD_RSS_TOLERANCE_KIB} KiB); descriptors {reload_fds_before} -> {reload_fds_after}; "
          f"requests meanwhile: {light['ok']} ok, {light['failed']} failed")
    print(f"{DISTINCT} reloads of config texts never seen before: RSS {distinct_before} KiB -> {distinct_after} KiB "
          f"({(distinct_after - distinct_before) / DISTINCT:+.1f} KiB per new text)")
    for f in failures[:10]:
        print("  failure:", f)
    bad = (stats["failed"] > 0 or end_rss - start_rss > RSS_TOLERANCE_KIB or end_fds - start_fds > FD_TOLERANCE or not alive
           or leftover or stats["scrape_failures"] > 0 or stats["bad_auth_unexpected"] > 0 or light["failed"] > 0
           or reload_rss_after - reload_rss_before > RELOAD_RSS_TOLERANCE_KIB or reload_fds_after - reload_fds_before > FD_TOLERANCE)
    failed = stats["failed"] + stats["scrape_failures"] + stats["bad_auth_unexpected"] + light["failed"]
    print(f"{stats['ok'] + stats['injected'] + light['ok']} passed, {failed} failed")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
