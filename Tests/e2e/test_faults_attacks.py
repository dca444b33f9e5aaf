#!/usr/bin/env python3
"""Attacks on the fixes for faults (ports, credentials, reload, secrets) and operations (reports, systemd),
tried as a hostile client or a careless operator would. Everything on loopback."""
import base64, concurrent.futures, hashlib, os, signal, socket, subprocess, sys, tempfile, threading, time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from test_faults import bcrypt_hash, proxy_get, write  # noqa: E402
import test_faults  # noqa: E402

ENV = test_faults.ENV


def setUpModule():
    test_faults.setUpModule()


def tearDownModule():
    test_faults.tearDownModule()


def basic(user, password):
    return {"Proxy-Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


class HashingQueueFlood(unittest.TestCase):
    """Wrong passwords from many client addresses fill the bcrypt queue. A client whose address has no recent
    failure, with the right password never seen before, must still get through (not a 503)."""

    def test_fresh_good_client_is_not_starved_by_a_flood_from_many_addresses(self):
        d = ENV["dir"]
        alice = bcrypt_hash("right-horse", 11)
        if alice is None:
            self.skipTest("no crypt module to make a bcrypt hash")
        port = harness.free_port()
        write(f"{d}/users-flood", f"alice:{alice}\n")
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

            attackers = [threading.Thread(target=bad, args=(i,)) for i in range(96)]
            for a in attackers:
                a.start()
            time.sleep(3.0)  # the queue is full now, and kept full
            t = time.monotonic()
            status = proxy_get(port, headers=basic("alice", "right-horse"), timeout=120, source="127.0.0.3")[0]
            took = time.monotonic() - t
            stop.set()
            for a in attackers:
                a.join(120)
            print(f"\n  fresh good client: {status} after {took:.2f} s; flood: "
                  + ", ".join(f"{bad_statuses.count(s)} x {s}" for s in sorted(set(bad_statuses))), file=sys.stderr)
            self.assertEqual(status, 200, "a good client from a clean address was refused while others flooded")
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


if __name__ == "__main__":
    harness.run_suite()
