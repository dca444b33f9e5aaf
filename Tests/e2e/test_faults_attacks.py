#!/usr/bin/env python3
"""Attacks on the fixes for faults (ports, credentials, reload, secrets) and operations (reports, systemd),
tried as a hostile client or a careless operator would. Everything on loopback."""
import base64, concurrent.futures, hashlib, os, signal, socket, subprocess, sys, tempfile, threading, time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from test_faults import basic, bcrypt_hash, proxy_get, write  # noqa: E402
import test_faults  # noqa: E402

ENV = test_faults.ENV


def setUpModule():
    test_faults.setUpModule()


def tearDownModule():
    test_faults.tearDownModule()


class HashingQueueFlood(unittest.TestCase):
    """Wrong passwords from many client addresses fill the bcrypt queue. A client whose address has no recent
    failure, with the right password never seen before, must still get through (not a 503)."""

    def test_fresh_good_client_is_not_starved_by_a_flood_from_many_addresses(self):
        d = ENV["dir"]
        alice = bcrypt_hash("right-horse", 11)
        if alice is None:
            self.skipTest("htpasswd (apache2-utils) is not installed to make a bcrypt hash")
        port = harness.free_port()
        write(f"{d}/users-flood", "".join(f"{u}:{alice}\n" for u in ("alice", "carol", "dave")))
        write(f"{d}/flood.conf", f'[proxy]\nlisten = "127.0.0.1:{port}"\nworkers = 1\nauth_file = "users-flood"\n'
              + test_faults.routes())
        procs = harness.Processes()
        try:
            harness.start_proxy(procs, f"{d}/flood.conf", f"{d}/flood.log", port)
            sources = [f"127.0.0.{i}" for i in range(10, 34)]

            stop = threading.Event()
            bad_statuses = []

            def bad(i):
                n = 0
                while not stop.is_set():
                    n += 1
                    try:
                        bad_statuses.append(proxy_get(port, headers=basic("alice", f"wrong-{i}-{n}"), timeout=120,
                                                      source=sources[i % len(sources)])[0])
                    except OSError:
                        bad_statuses.append(-1)
                    time.sleep(0.05)  # keeps the queue full without only measuring a CPU-bound loop

            attackers = [threading.Thread(target=bad, args=(i,)) for i in range(96)]
            for a in attackers:
                a.start()
            time.sleep(3.0)  # the queue is full now, and kept full
            t = time.monotonic()
            # Three first-time clients, each on its own clean address, one after the other.
            statuses = [proxy_get(port, headers=basic(user, "right-horse"), timeout=120, source=source)[0]
                        for user, source in [("alice", "127.0.0.3"), ("carol", "127.0.0.4"), ("dave", "127.0.0.5")]]
            took = time.monotonic() - t
            stop.set()
            for a in attackers:
                a.join(120)
            print(f"\n  fresh good clients: {statuses} in {took:.2f} s; flood: "
                  + ", ".join(f"{bad_statuses.count(s)} x {s}" for s in sorted(set(bad_statuses))), file=sys.stderr)
            self.assertEqual(statuses, [200] * 3, "a good client from a clean address was refused while others flooded")
            self.assertTrue(set(bad_statuses) <= {407, 429, 503}, bad_statuses)
        finally:
            procs.stop_all()


class StuckNotifySocket(unittest.TestCase):
    """sd_notify is best effort: a NOTIFY_SOCKET whose reader never reads (a hung supervisor, a wrong value)
    fills its queue; the proxy must not block on it (its main loop answers /healthz and handles signals)."""

    def test_a_notify_socket_nobody_reads_does_not_block_the_main_loop(self):
        d = ENV["dir"]
        port, admin = harness.free_port(), harness.free_port()
        write(f"{d}/notify.conf", f'[proxy]\nlisten = "127.0.0.1:{port}"\nworkers = 1\n'
              f'[admin]\nlisten = "127.0.0.1:{admin}"\n' + test_faults.routes())
        path = f"{d}/notify.sock"
        if os.path.exists(path):
            os.unlink(path)
        sink = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sink.bind(path)  # never read
        procs = harness.Processes()
        try:
            with open(f"{d}/notify.log", "ab") as log:
                p = procs.start([harness.proxy_binary(), "run", "--config", f"{d}/notify.conf"], stdout=log,
                                stderr=subprocess.STDOUT, env=harness.clean_env(NOTIFY_SOCKET=path, SWIFT_BACKTRACE="enable=no"))
            harness.wait_for_port(admin)
            for _ in range(15):  # two datagrams each: past the receiver's queue (10 by default)
                p.send_signal(signal.SIGHUP)
                time.sleep(0.3)
            status, _ = test_faults.admin_get(admin, "/healthz")
            self.assertEqual(status, 200)
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(30)
            except subprocess.TimeoutExpired:
                self.fail("SIGTERM not handled: the main loop is stuck sending to NOTIFY_SOCKET")
        except OSError as e:
            self.fail(f"/healthz did not answer: {e}")
        finally:
            procs.stop_all()
            sink.close()


class SharedAddress(unittest.TestCase):
    """A sidecar's clients all come from 127.0.0.1: one of them with a stale password reaches the failure limit
    for the address. A client whose credentials the proxy has already verified must not be refused then, on
    whichever worker its next connection lands."""

    def test_verified_client_is_not_limited_by_a_neighbour_on_the_same_address(self):
        d = ENV["dir"]
        alice = bcrypt_hash("right-horse", 8)
        if alice is None:
            self.skipTest("htpasswd (apache2-utils) is not installed to make a bcrypt hash")
        port = harness.free_port()
        write(f"{d}/users-shared", f"alice:{alice}\nbob:sha256:{hashlib.sha256(b'battery').hexdigest()}\n")
        write(f"{d}/shared.conf", f'[proxy]\nlisten = "127.0.0.1:{port}"\nworkers = 2\nauth_file = "users-shared"\n'
              + test_faults.routes())
        procs = harness.Processes()
        try:
            harness.start_proxy(procs, f"{d}/shared.conf", f"{d}/shared.log", port)
            self.assertEqual(proxy_get(port, headers=basic("alice", "right-horse"), timeout=30)[0], 200)
            self.assertEqual(proxy_get(port, headers=basic("bob", "battery"), timeout=30)[0], 200)
            bad = [proxy_get(port, headers=basic("alice", f"stale-{i}"), timeout=30)[0] for i in range(12)]
            self.assertIn(429, bad, "the neighbour's failures were not limited")
            good = [proxy_get(port, headers=basic(u, p), timeout=30)[0]
                    for i in range(20) for u, p in [("alice", "right-horse"), ("bob", "battery")]]
            print(f"\n  neighbour: {bad}; verified clients after it: {good}", file=sys.stderr)
            self.assertEqual(good, [200] * 40, "a verified client was refused because of its neighbour")
            # A password change in auth_file (reload) is not bypassed by what was verified before.
            write(f"{d}/users-shared", f"alice:{alice}\nbob:sha256:{hashlib.sha256(b'staple').hexdigest()}\n")
            os.kill(procs.procs[0].pid, signal.SIGHUP)
            time.sleep(2)
            statuses = {proxy_get(port, headers=basic("bob", "battery"), timeout=30, source="127.0.0.9")[0]
                        for _ in range(10)}
            self.assertEqual(statuses, {407}, "an old password was still accepted after the reload")
        finally:
            procs.stop_all()


class ReplacedCertificateFolder(unittest.TestCase):
    """A deploy script replaces the whole certificate folder (rm -rf then a new one, or a new folder renamed into
    place). The watcher lost the folder's watch with it: the new certificate must still be picked up."""

    def check_replaced(self, name, replace):
        d = tempfile.mkdtemp(prefix=f"mtls-proxy-{name}-", dir=ENV["dir"])
        pki = f"{ENV['dir']}/pki"
        os.makedirs(f"{d}/certs")
        for src, dst in [("fusion-us.pem", "id.pem"), ("fusion-us.key", "id.key")]:
            write(f"{d}/certs/{dst}", harness.read(f"{pki}/{src}"), 0o600)
        port = harness.free_port()
        write(f"{d}/p.conf", f'[proxy]\nlisten = "127.0.0.1:{port}"\nworkers = 1\n[upstream]\nca_file = "{pki}/ca.pem"\n'
              f'[identities.us]\ncert = "certs/id.pem"\nkey = "certs/id.key"\n[[route]]\nhost = "{test_faults.HOST}"\n'
              f'identity = "us"\nconnect = "127.0.0.1:{ENV["up"]}"\n')
        procs = harness.Processes()
        try:
            harness.start_proxy(procs, f"{d}/p.conf", f"{d}/p.log", port)
            time.sleep(0.5)
            replace(d, pki)
            deadline = time.time() + 20
            while time.time() < deadline and "presents CN=fusion-eu" not in harness.read(f"{d}/p.log"):
                time.sleep(0.2)
            self.assertIn("presents CN=fusion-eu", harness.read(f"{d}/p.log"),
                          "the certificate in the replaced folder was never loaded")
        finally:
            procs.stop_all()

    @staticmethod
    def new_folder(path, pki):
        os.makedirs(path)
        for src, dst in [("fusion-eu.pem", "id.pem"), ("fusion-eu.key", "id.key")]:
            write(f"{path}/{dst}", harness.read(f"{pki}/{src}"), 0o600)

    def test_folder_removed_then_made_again(self):
        def replace(d, pki):
            import shutil
            shutil.rmtree(f"{d}/certs")
            time.sleep(1.5)  # the failed reload of the missing files happens in between
            self.new_folder(f"{d}/certs", pki)
        self.check_replaced("rmdir", replace)

    def test_folder_renamed_away_and_a_new_one_renamed_in(self):
        def replace(d, pki):
            self.new_folder(f"{d}/certs.new", pki)
            os.rename(f"{d}/certs", f"{d}/certs.old")
            os.rename(f"{d}/certs.new", f"{d}/certs")
        self.check_replaced("rename", replace)


class AuthFilePermissions(unittest.TestCase):
    """auth_file holds password hashes; sha256 entries are unsalted and fast to try offline. An auth_file that
    everyone can read draws the same warning as a private key, from check and from run."""

    def test_auth_file_readable_by_everyone_is_reported(self):
        d = ENV["dir"]
        port = harness.free_port()
        write(f"{d}/users-perm", f"bob:sha256:{hashlib.sha256(b'battery').hexdigest()}\n", 0o644)
        write(f"{d}/authperm.conf", f'[proxy]\nlisten = "127.0.0.1:{port}"\nworkers = 1\nauth_file = "users-perm"\n'
              + test_faults.routes())
        r = subprocess.run([harness.proxy_binary(), "check", "--config", f"{d}/authperm.conf"], capture_output=True,
                           text=True, timeout=30, env=harness.clean_env(SWIFT_BACKTRACE="enable=no"))
        self.assertRegex(r.stdout + r.stderr, r"warning: .*users-perm is readable by everyone \(mode 644\)")
        os.chmod(f"{d}/users-perm", 0o600)
        r = subprocess.run([harness.proxy_binary(), "check", "--config", f"{d}/authperm.conf"], capture_output=True,
                           text=True, timeout=30, env=harness.clean_env(SWIFT_BACKTRACE="enable=no"))
        self.assertNotIn("users-perm is readable", r.stdout + r.stderr)


if __name__ == "__main__":
    harness.run_suite()
