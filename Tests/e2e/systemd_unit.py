"""The systemd side of the end-to-end suites: a stand-in for $NOTIFY_SOCKET, a unit file's settings, and its
ExecStartPre/ExecStart lines run as systemd runs them (used by test_deploy on the repository's unit and by
test_package on the installed one)."""
import os, shlex, socket, subprocess, time

import harness


class NotifySocket:
    """A unix datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, directory, abstract=False):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        if abstract:
            name = f"mtls-proxy-test-{os.getpid()}-{time.time_ns()}"
            self.sock.bind("\0" + name)
            self.address = "@" + name
        else:
            self.address = os.path.join(directory, f"notify-{time.time_ns()}.sock")
            self.sock.bind(self.address)
        self.sock.settimeout(20)
        self.messages = []

    def next(self):
        data = self.sock.recv(4096).decode()
        fields = dict(line.split("=", 1) for line in data.splitlines() if line)
        self.messages.append(fields)
        return fields

    def close(self):
        self.sock.close()


def unit_settings(text):
    """A unit file's settings: key -> every value it is given, in order (continuation lines joined)."""
    settings = {}
    for line in text.replace("\\\n", " ").splitlines():
        line = line.strip()
        if "=" in line and not line.startswith(("#", ";", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def unit_command(line, binary, config):
    """An Exec*= line of the unit as the argument vector systemd runs, with `binary` for the installed mtls-proxy
    and `config` for /etc/mtls-proxy/proxy.conf. A prefix that makes systemd ignore a failure ('-') or change
    who runs it would hide what this checks, so none is allowed."""
    assert not line.startswith(("-", "@", "+", "!", ":", "|")), line
    argv = shlex.split(line)
    assert argv[0] in ("/usr/bin/mtls-proxy", "/usr/local/bin/mtls-proxy"), argv
    return [binary] + [config if a == "/etc/mtls-proxy/proxy.conf" else a for a in argv[1:]]


def start_as_the_unit_would(test, unit_text, config, binary=None, run_as=(), log=None):
    """Runs the unit's ExecStartPre lines, each of which must succeed (systemd fails the start otherwise), then
    its ExecStart with a $NOTIFY_SOCKET (Type=notify): returns the process once it sent READY=1. `run_as` is a
    command prefix that changes user and groups (setpriv ...), as the unit's DynamicUser and SupplementaryGroups
    do; `log` is the file for the proxy's output (default: beside the config)."""
    binary = binary or os.path.abspath(harness.proxy_binary())
    settings = unit_settings(unit_text)
    test.assertTrue(settings.get("ExecStartPre"), "no ExecStartPre: nothing checks the config before the start")
    for line in settings.get("ExecStartPre", []):
        argv = list(run_as) + unit_command(line, binary, config)
        r = subprocess.run(argv, capture_output=True, text=True, timeout=60, env=harness.clean_env())
        test.assertEqual(r.returncode, 0, f"ExecStartPre={line} exits {r.returncode}: systemd would not start the "
                                          f"proxy\n{r.stdout}{r.stderr}")
    [start] = settings["ExecStart"]
    notify = NotifySocket(os.path.dirname(config), abstract=True)  # an abstract name: no file permissions involved
    test.addCleanup(notify.close)
    env = harness.clean_env(NOTIFY_SOCKET=notify.address)
    out = open(log or config + ".unit.log", "wb")
    test.addCleanup(out.close)
    proc = subprocess.Popen(list(run_as) + unit_command(start, binary, config), stdout=out, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)
    test.addCleanup(lambda: proc.poll() is None and (proc.kill(), proc.wait()))
    test.assertEqual(notify.next().get("READY"), "1")
    return proc
