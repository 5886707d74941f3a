"""Helpers shared by the benchmarks: machine banner, percentiles, configs, renumbered real calls, and
the command side of the stand-in switches' event socket.

No servers, no monkey-patching: each benchmark patches gevent itself before
importing this module, so whatever this imports is already patched.
"""

import os
import platform
import re
import resource
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Callable

import gevent
import greenlet

from fs_crm.sim.config import sim_config, to_toml

API_KEY = "bench-key"
ACCOUNT = "shop"
PASSWORD = "ClueCon"
# Every call scenario recorded on the real PBX (register_unregister holds no call).
SCENARIOS = ("in_answered_ringgroup", "in_missed", "in_busy", "out_answered", "out_busy", "click_to_call",
             "in_socket_route", "internal")


# --- printing -------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_gib() -> str:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return "%.1f GiB" % (int(line.split()[1]) / 1024 / 1024)
    except OSError:
        pass
    return "unknown"


def banner(title: str, what: str) -> None:
    """The benchmark's name, what it measures, and the machine it ran on."""
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print("=" * 100)
    print(title)
    print(what)
    print("machine: %s cores (%s usable), %s, %s RAM, %s" % (os.cpu_count(), usable, _cpu_model(), _memory_gib(),
                                                            platform.platform()))
    print("python %s, gevent %s, greenlet %s" % (sys.version.split()[0], gevent.__version__, greenlet.__version__))
    print("-" * 100)
    sys.stdout.flush()


def figure(label: str, value: str, goal: str = "") -> None:
    """One labelled figure, with its goal when it has one."""
    print("  %-56s %s%s" % (label, value, "   (goal: %s)" % goal if goal else ""))


def result(text: str) -> None:
    """A headline line; run_all.py repeats these in its summary."""
    print("result: %s" % text)
    sys.stdout.flush()


def percentile(values: list[float], p: float) -> float:
    """Linear interpolation between closest ranks (p in 0..100) of a non-empty list."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    rank = (len(ordered) - 1) * p / 100.0
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


# --- configuration --------------------------------------------------------------------------------

def config_table(fs_host: str, fs_port: int, crm_url: str, state_dir: Path) -> dict:
    """The same single-account config the end-to-end tests use, as a dict for parse_config()."""
    return sim_config(fs_host, fs_port, crm_url, state_dir, api_key=API_KEY, account=ACCOUNT)


def config_toml(fs_host: str, fs_port: int, crm_url: str, state_dir: Path) -> str:
    """That config as an operator writes it; the API key comes from FS_CRM_ACCOUNT_SHOP_API_KEY."""
    return to_toml(config_table(fs_host, fs_port, crm_url, state_dir))


# --- real calls -----------------------------------------------------------------------------------

def distinct_id(seed: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, "fs-crm-bench/" + seed))


def shut_down(service: subprocess.Popen, log, *fakes) -> tuple[int | None, float]:
    """End of a run: stop the service (see stop_service), close its log file, stop the fakes."""
    try:
        return stop_service(service)
    finally:
        log.close()
        for fake in fakes:
            fake.stop()


def print_problems(problems: list[str], most: int = 10) -> None:
    for problem in problems[:most]:
        print("    problem: %s" % problem)
    if len(problems) > most:
        print("    ... %d more problems" % (len(problems) - most))


def stop_service(service: subprocess.Popen) -> tuple[int | None, float]:
    """SIGTERM the service (kill it after 20 s) and return (exit code, seconds it took)."""
    stopping = time.monotonic()
    if service.poll() is None:
        service.send_signal(signal.SIGTERM)
        try:
            exit_code = service.wait(timeout=20)
        except subprocess.TimeoutExpired:
            service.kill()
            service.wait()
            exit_code = None
    else:
        exit_code = service.returncode
    return exit_code, time.monotonic() - stopping


def log_problems(log_path: Path) -> list[str]:
    """WARNING, ERROR and CRITICAL lines of the service's log."""
    text = log_path.read_text(errors="replace")
    return [line for line in text.splitlines() if re.search(r" (WARNING|ERROR|CRITICAL) ", line)]


def service_cpu_seconds(pid: int) -> float:
    """utime + stime of another process, from /proc (Linux)."""
    try:
        fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_kib() -> int:
    """This process's resident set size now (VmRSS from /proc/self/status, Linux), in KiB; 0 if unknown."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, IndexError, ValueError):
        pass
    return 0


# --- the stand-in switches' event socket ----------------------------------------------------------
def esl_reply(text: str) -> bytes:
    return ("Content-Type: command/reply\nReply-Text: %s\n\n" % text).encode()


def esl_api_response(text: str) -> bytes:
    body = text.encode()
    return b"Content-Type: api/response\nContent-Length: %d\n\n%s" % (len(body), body)


def answer_esl_commands(recv: Callable[[int], bytes], send: Callable[[bytes], None],
                        on_subscribed: Callable[[], None]) -> None:
    """What a FreeSWITCH inbound event socket answers to fs-crm (or greenswitch) until the client
    leaves: the auth banner, auth, `event` (then on_subscribed, which may stream events at once), an
    empty `show channels`, +OK to other api/bgapi commands. Events are the caller's business."""
    send(b"Content-Type: auth/request\n\n")
    buffer = b""
    while True:
        while b"\n\n" not in buffer:
            data = recv(65536)
            if not data:
                return
            buffer += data
        command, _, buffer = buffer.partition(b"\n\n")
        line = command.split(b"\n", 1)[0].decode(errors="replace").strip()
        if line.startswith("auth "):
            send(esl_reply("+OK accepted" if line[5:] == PASSWORD else "-ERR invalid"))
        elif line.startswith("event "):
            send(esl_reply("+OK event listener enabled plain"))
            on_subscribed()
        elif line == "api show channels as json":
            send(esl_api_response('{"row_count": 0}\n'))
        elif line.startswith("api "):
            send(esl_api_response("+OK\n"))
        elif line.startswith("bgapi "):
            send(esl_reply("+OK Job-UUID: %s" % uuid.uuid4()))
        elif line.startswith("exit"):
            send(esl_reply("+OK bye"))
            return
        else:
            send(esl_reply("+OK"))
