"""A throwaway real FreeSWITCH for the live tests: the test PBX of tests/live/pbx/ on free ports,
every directory in a temp dir, started as a child process and stopped afterwards."""

from __future__ import annotations

import os
import random
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from fs_crm.polling import wait_for

FREESWITCH = Path(os.environ.get("FS_CRM_FREESWITCH_PREFIX", "/usr/local/freeswitch"))
BINARY = FREESWITCH / "bin" / "freeswitch"
CONF_TEMPLATE = Path(__file__).parent / "pbx"
REPO = Path(__file__).resolve().parents[2]
RECORDING_SNIPPET = REPO / "conf" / "freeswitch" / "recording.xml"
DND_SNIPPET = REPO / "conf" / "freeswitch" / "dnd.xml"
INSTALL_HINT = "install it with ../shared/freeswitch/install (root, about 10 s)"
ESL_PASSWORD = "ClueCon"
DOMAIN = "pbx.test"
PHONE_PASSWORDS = {"100": "phone100", "200": "phone200", "300": "phone300", "400": "phone400"}


def installed() -> bool:
    return BINARY.exists() and shutil.which("sipp") is not None


def free_port() -> int:
    """A port free for both TCP and UDP (SIP listens on both)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = tcp.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
            return port


def free_media_port() -> int:
    """A base for SIPp's -mp: SIPp binds it and the next three UDP ports (audio, then video at +2),
    and checks none of them but the first against its neighbours. The band sits below the kernel's
    ephemeral range, so no free_port() of another party can take a neighbour after the check."""
    while True:
        base = random.randrange(10000, 19996, 4)
        sockets = []
        try:
            for port in range(base, base + 4):
                udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(udp)
                udp.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            for udp in sockets:
                udp.close()
        return base


@dataclass
class Ports:
    esl: int
    local_sip: int
    external_sip: int
    carrier_sip: int
    router: int
    cdr: int
    rtp_start: int
    # Free when picked and never listened on: the router failover number's dead first host.
    dead_router: int

    @classmethod
    def pick(cls) -> "Ports":
        ports = set()
        while len(ports) < 7:
            ports.add(free_port())
        esl, local_sip, external_sip, carrier_sip, router, cdr, dead_router = sorted(ports)
        # RTP ports: a window FreeSWITCH picks even ports from; collisions with other tests are
        # harmless (no media flows), but keep it away from the common ephemeral range start.
        rtp_start = 20000 + (os.getpid() % 400) * 100
        return cls(esl, local_sip, external_sip, carrier_sip, router, cdr, rtp_start, dead_router)


class LivePbx:
    """One FreeSWITCH process. `start()` returns once its event socket answers `api status` and the
    SIP profiles are up; `stop()` shuts it down and waits for the process to exit."""

    def __init__(self, root: Path, ports: Ports | None = None, router_call_timeout: int = 6):
        self.root = root
        self.ports = ports or Ports.pick()
        self.router_call_timeout = router_call_timeout
        self.process: subprocess.Popen | None = None
        self.dirs = {name: root / name for name in ("conf", "log", "db", "run", "rec", "storage", "tmp")}
        # mod_json_cdr's err-log-dir: every leg's CDR lands here as <uuid>.cdr.json (nothing takes
        # the posts in the live tests).
        self.cdr_spool = self.dirs["log"] / "json_cdr_errors"

    # --- config ---------------------------------------------------------------------------------
    def write_config(self) -> None:
        conf = self.dirs["conf"]
        if conf.exists():
            shutil.rmtree(conf)
        shutil.copytree(CONF_TEMPLATE, conf)
        shutil.copy(RECORDING_SNIPPET, conf / "fs_crm_recording.xml")
        shutil.copy(DND_SNIPPET, conf / "fs_crm_dnd.xml")
        for path in self.dirs.values():
            path.mkdir(parents=True, exist_ok=True)
        (self.dirs["rec"] / "fs-crm").mkdir(exist_ok=True)
        p = self.ports
        values = {
            "esl_port": p.esl, "esl_password": ESL_PASSWORD, "local_sip_port": p.local_sip,
            "external_sip_port": p.external_sip, "carrier_sip_port": p.carrier_sip, "router_port": p.router,
            "dead_router_port": p.dead_router,
            "router_call_timeout": self.router_call_timeout,
            "cdr_url": "http://127.0.0.1:%d/cdr" % p.cdr, "rtp_start": p.rtp_start, "rtp_end": p.rtp_start + 98,
            "db_dir": self.dirs["db"], "log_dir": self.dirs["log"], "storage_dir": self.dirs["storage"],
            "cdr_spool_dir": self.cdr_spool,
            "sounds_dir": self.dirs["tmp"], "vanilla_conf": FREESWITCH / "etc" / "freeswitch",
        }
        lines = ['<include>'] + ['  <X-PRE-PROCESS cmd="set" data="%s=%s"/>' % kv for kv in values.items()]
        (conf / "vars.xml").write_text("\n".join(lines + ["</include>", ""]))

    # --- process --------------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        if self.process is None or self.process.poll() is not None:
            self.write_config()
        d = self.dirs
        command = [str(BINARY), "-nf", "-nc", "-nonat", "-conf", str(d["conf"]), "-log", str(d["log"]),
                   "-db", str(d["db"]), "-run", str(d["run"]), "-recordings", str(d["rec"]),
                   "-storage", str(d["storage"]), "-temp", str(d["tmp"])]
        self.console = open(self.root / "console.log", "ab")
        self.process = subprocess.Popen(command, stdout=self.console, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)
        if not wait_for(self._ready, timeout=timeout, interval=0.1):
            tail = self.log_tail()
            self.kill()
            raise RuntimeError("FreeSWITCH did not come up within %ss; last log lines:\n%s" % (timeout, tail))

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise RuntimeError("FreeSWITCH exited with %s at start; log:\n%s" % (self.process.returncode,
                                                                                 self.log_tail()))
        try:
            status = self.api("sofia status")
        except OSError:
            return False
        return "local" in status and "external" in status and "RUNNING" in status

    def stop(self, timeout: float = 15.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        try:
            self.api("fsctl shutdown", timeout=2.0)
        except OSError:
            pass
        try:
            self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """kill -9: FreeSWITCH dies mid-call, as in a crash."""
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def log_tail(self, lines: int = 40) -> str:
        log = self.dirs["log"] / "freeswitch.log"
        source = log if log.exists() else self.root / "console.log"
        try:
            return "\n".join(source.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # --- a bare ESL client for the tests' own commands --------------------------------------------
    def api(self, command: str, timeout: float = 5.0) -> str:
        """`api <command>` on a connection of its own; the body of FreeSWITCH's answer."""
        with EslClient("127.0.0.1", self.ports.esl, timeout) as client:
            return client.api(command)

    def channels(self) -> list[dict]:
        import json

        text = self.api("show channels as json")
        return json.loads(text).get("rows", []) if text.strip().startswith("{") else []


class EslClient:
    """A minimal blocking inbound ESL client: for the tests' own commands and for recording the raw
    event stream (captures). Deliberately independent of fs-crm's code, so it can judge it."""

    def __init__(self, host: str, port: int, timeout: float = 5.0):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buffer = b""
        self.raw = bytearray()
        self._frame()  # auth/request
        self.send("auth %s" % ESL_PASSWORD)

    def __enter__(self) -> "EslClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _read(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("FreeSWITCH closed the event socket")
        self.raw += data
        self.buffer += data

    def _frame(self) -> tuple[dict, bytes]:
        while b"\n\n" not in self.buffer:
            self._read()
        head, self.buffer = self.buffer.split(b"\n\n", 1)
        headers = dict(line.split(": ", 1) for line in head.decode().splitlines() if ": " in line)
        length = int(headers.get("Content-Length", 0))
        while len(self.buffer) < length:
            self._read()
        body, self.buffer = self.buffer[:length], self.buffer[length:]
        return headers, body

    def send(self, command: str) -> dict:
        self.sock.sendall(command.encode() + b"\n\n")
        while True:
            headers, body = self._frame()
            if headers.get("Content-Type") in ("command/reply", "api/response"):
                headers["_body"] = body.decode(errors="replace")
                return headers

    def api(self, command: str) -> str:
        return self.send("api %s" % command)["_body"]

    def frames(self, deadline: float):
        """Frames until `deadline` (time.monotonic); used by the capture recorder."""
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                yield self._frame()
            except (socket.timeout, TimeoutError):
                return
