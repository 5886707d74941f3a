"""The state disk failing under a running fs-crm, through its real interfaces.

A small tmpfs filled to its last page, an ext4 that turns itself read-only, the outbox locked by
another process, and the memory bound while the disk fails. The service runs in-process or as
`python -m fs_crm run`; the fake FreeSWITCH speaks ESL over TCP, the fake retailCRM answers HTTP,
/healthz is read over HTTP. Each test counts the calls it played (produced) against what the CRM
stored: delivered, duplicated (stored twice), lost; and resent (uploaded again, answered as duplicate).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest
from e2e import config_table, make_config, spawn_service

from fs_crm.polling import wait_for
from fs_crm.service import Service
from fs_crm.sim import free_port
from fs_crm.sim.calls import first_leg, fresh_call
from fs_crm.sim.config import to_toml
from fs_crm.store.saver import StateSaver

SCENARIOS = ("in_missed", "out_answered", "in_busy", "out_busy")
# A busy incoming call is refused before any phone rings: it has a history record but no card.
CARDLESS = {"in_busy"}


# --- disks ----------------------------------------------------------------------------------------

def _run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def _unmount(path: Path) -> None:
    if _run("umount", str(path)).returncode != 0:
        # Something (a process a failed test left behind) still holds a file: detach it anyway.
        _run("umount", "-l", str(path))


@pytest.fixture
def tmpfs(tmp_path):
    """A 2 MiB tmpfs, always unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root (CI runs as root)")
    mount_point = tmp_path / "tmpfs"
    mount_point.mkdir()
    result = _run("mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount_point))
    if result.returncode != 0:
        pytest.skip("mount -t tmpfs is not permitted here: %s" % result.stderr.strip())
    try:
        yield mount_point
    finally:
        _unmount(mount_point)


def fill(directory: Path) -> Path:
    """A filler file that takes every free page of the file system: the next one gets ENOSPC."""
    filler = directory / "filler"
    chunk = 1 << 20
    with open(filler, "wb", buffering=0) as out:
        while chunk >= 512:
            try:
                out.write(b"\0" * chunk)
            except OSError as exc:
                if exc.errno != errno.ENOSPC:
                    raise
                chunk //= 2
    assert shutil.disk_usage(directory).free < 4096
    return filler


class Ext4:
    """An ext4 on a loop device that turns itself read-only on an error, as one on a failing disk does."""

    def __init__(self, image: Path, mount_point: Path):
        self.image, self.mount_point = image, mount_point
        self.device = ""

    def mount(self) -> None:
        result = _run("mount", "-o", "loop,errors=remount-ro", str(self.image), str(self.mount_point))
        if result.returncode != 0:
            raise OSError("mount %s: %s" % (self.image, result.stderr.strip()))
        self.device = _run("findmnt", "-no", "SOURCE", str(self.mount_point)).stdout.strip()

    def unmount(self) -> None:
        _unmount(self.mount_point)

    @property
    def trigger(self) -> Path:
        return Path("/sys/fs/ext4") / os.path.basename(self.device) / "trigger_fs_error"

    def go_read_only(self) -> None:
        """What ext4 does on a metadata error with errors=remount-ro: read-only under open files.

        `mount -o remount,ro` cannot get there: the kernel refuses it (EBUSY, "mount point is busy")
        while a file is open for writing, and the outbox always is; a bind mount's ro flag likewise."""
        self.trigger.write_text("fs-crm fault test\n")
        assert not self.writable()

    def writable(self) -> bool:
        probe = self.mount_point / "probe"
        try:
            probe.write_bytes(b"x")
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
            return False
        probe.unlink()
        return True

    def options(self) -> str:
        return _run("findmnt", "-no", "OPTIONS", str(self.mount_point)).stdout.strip()


@pytest.fixture
def ext4(tmp_path):
    """A 16 MiB ext4 (with its journal, as installed) on a loop device, always unmounted afterwards."""
    if os.geteuid() != 0:
        pytest.skip("mounting a loop device needs root (CI runs as root)")
    if not (shutil.which("mkfs.ext4") and shutil.which("e2fsck")):
        pytest.skip("mkfs.ext4 and e2fsck (e2fsprogs) are needed")
    image = tmp_path / "ext4.img"
    with open(image, "wb") as out:
        out.truncate(16 << 20)
    result = _run("mkfs.ext4", "-q", "-F", str(image))
    assert result.returncode == 0, result.stderr
    disk = Ext4(image, tmp_path / "ext4")
    disk.mount_point.mkdir()
    try:
        disk.mount()
    except OSError as exc:
        pytest.skip("cannot mount an ext4 loop device here: %s" % exc)
    try:
        if not disk.trigger.exists():
            pytest.skip("this kernel has no %s to make an ext4 fail" % disk.trigger)
        yield disk
    finally:
        disk.unmount()


# --- the service and what the outside sees ----------------------------------------------------------

@contextlib.contextmanager
def in_process_service(fs, crm, state: Path, port: int):
    svc = Service(make_config(fs, crm, state, http_port=port))
    svc.start()
    try:
        assert fs.wait_subscribed(timeout=10)
        yield svc
    finally:
        svc.stop()


def service_toml(tmp_path: Path, fs, crm, state: Path, http_port: int) -> Path:
    path = tmp_path / "fs-crm.toml"
    path.write_text(to_toml(config_table(fs, crm, state, http_port=http_port)))
    return path


@pytest.fixture
def processes():
    """`fs-crm run` subprocesses, killed if a test leaves one running (before its disk is unmounted)."""
    started: list[subprocess.Popen] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def healthz(port: int, timeout: float = 10.0) -> tuple[int, dict]:
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/healthz" % port, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def settled(port: int) -> bool:
    """Healthy, and nothing left in the outbox: what the service had on disk reached the CRM."""
    try:
        status, body = healthz(port, timeout=2.0)
    except OSError:
        return False  # not listening yet
    return status == 200 and body["outbox"]["pending"] == 0 and body["outbox"]["held"] == 0


class Played(list):
    """externalIds of the calls played, in order; `carded` those that show a card."""

    def __init__(self):
        super().__init__()
        self.carded: set[str] = set()


def play_calls(fs, label: str, count: int) -> Played:
    played = Played()
    for i in range(count):
        scenario = SCENARIOS[i % len(SCENARIOS)]
        call = fresh_call(scenario, "%s-%d" % (label, i))
        fs.play(call)
        played.append(first_leg(call))
        if scenario not in CARDLESS:
            played.carded.add(first_leg(call))
    return played


def cards_arrived(crm, played: Played) -> bool:
    return played.carded <= {e.get("callExternalId") for e in crm.events}


@dataclass
class Tally:
    produced: int
    delivered: int
    duplicated: int  # stored by the CRM more than once
    lost: int
    resent: int  # uploads of a call the CRM already had (it answers them as duplicates)

    def __str__(self) -> str:
        return ("produced %d / delivered %d / duplicated %d / lost %d (resent %d)"
                % (self.produced, self.delivered, self.duplicated, self.lost, self.resent))


def tally(crm, produced: list[str]) -> Tally:
    stored = Counter(c["externalId"] for c in crm.calls)
    uploaded = Counter(c["externalId"] for batch in crm.uploads for c in batch)
    return Tally(produced=len(produced), delivered=sum(1 for i in produced if stored[i]),
                 duplicated=sum(stored[i] - 1 for i in produced if stored[i] > 1),
                 lost=sum(1 for i in produced if not stored[i]),
                 resent=sum(uploaded[i] - 1 for i in produced if uploaded[i] > 1))


class CallsLost(AssertionError):
    """A call was lost or delivered twice."""


class HealthzSlow(AssertionError):
    pass


def assert_each_call_once(result: Tally, *context) -> None:
    if result.lost or result.duplicated:
        raise CallsLost(str(result), *context)


def report(name: str, result: Tally, started: float) -> None:
    print("\nFAULT %s: %s, %.1f s" % (name, result, time.monotonic() - started))


# --- 1. a full disk -----------------------------------------------------------------------------------

def test_given_state_disk_full_when_calls_finish_then_cards_flow_healthz_says_why_and_all_arrive_once(
        fakes, tmpfs, caplog, capfd, monkeypatch):
    started = time.monotonic()
    caplog.set_level(logging.INFO)
    monkeypatch.setattr("fs_crm.store.saver.REPORT_INTERVAL", 0.5)  # the once-a-minute line, sooner
    fs, crm = fakes
    port = free_port()
    with in_process_service(fs, crm, tmpfs / "state", port) as svc:
        baseline = play_calls(fs, "full-base", 1)
        assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=10)
        assert healthz(port)[0] == 200

        # One call waits on disk for a CRM that is down, so delivery meets the full disk too.
        crm.set_mode("down")
        pending = play_calls(fs, "full-pending", 1)
        assert wait_for(lambda: svc.health()[1]["outbox"]["pending"] == 1, timeout=10)
        filler = fill(tmpfs)
        crm.set_mode("ok")

        during = play_calls(fs, "full-during", 5)
        seen = []

        def degraded():
            status, body = healthz(port)
            seen.append((status, body.get("state")))
            return status == 503 and body["state"]["ok"] is False and body["state"]["unsaved_finished_calls"] > 0

        # The commits really failed (a WAL with room to spare would have taken them): not vacuous.
        assert wait_for(degraded, timeout=10), seen[-3:]
        state = seen[-1][1]
        assert "database or disk is full" in state["last_error"], state
        assert state["failing_since"] is not None
        assert crm.wait_for(lambda: cards_arrived(crm, during), timeout=10)
        assert not set(during) & {c["externalId"] for c in crm.calls}
        # Delivery meets the full disk too (an upload it cannot mark delivered), and the disk stays
        # full long enough for the saver to retry and say again what waits.
        assert wait_for(lambda: "history delivery pauses" in caplog.text, timeout=10)
        assert wait_for(lambda: "state disk still failing" in caplog.text, timeout=10)
        assert svc.failure is None

        filler.unlink()
        produced = baseline + pending + during
        assert crm.wait_for(lambda: tally(crm, produced).lost == 0, timeout=20), tally(crm, produced)
        assert wait_for(lambda: settled(port), timeout=10)
        assert svc.failure is None
    assert "Traceback" not in capfd.readouterr().err
    result = tally(crm, produced)
    report("full disk", result, started)
    assert_each_call_once(result)
    assert "state disk failing, nothing is lost" in caplog.text
    assert "state disk works again" in caplog.text


def test_given_state_disk_full_when_sigterm_then_exits_and_after_restart_nothing_lost(
        fakes, tmpfs, tmp_path, processes):
    started = time.monotonic()
    fs, crm = fakes
    port = free_port()
    config = service_toml(tmp_path, fs, crm, tmpfs / "state", port)
    log_path = tmp_path / "service.log"  # not on the full disk
    proc = spawn_service(config, log_path)
    processes.append(proc)
    assert fs.wait_subscribed(timeout=20), log_path.read_text()
    baseline = play_calls(fs, "term-base", 1)
    assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=15), log_path.read_text()

    filler = fill(tmpfs)
    during = play_calls(fs, "term-during", 4)

    def degraded():
        status, body = healthz(port)
        return status == 503 and body["state"]["unsaved_finished_calls"] == len(during)

    assert wait_for(degraded, timeout=10), healthz(port)
    assert crm.wait_for(lambda: cards_arrived(crm, during), timeout=10)
    assert proc.poll() is None

    proc.terminate()
    code = proc.wait(timeout=20)
    log = log_path.read_text()
    stopping = [line for line in log.splitlines() if "fs-crm stopping with" in line]
    print("\nexit code %d; %s" % (code, stopping))
    assert code == 0, log
    assert "fs-crm stopped" in log
    assert "Traceback" not in log

    filler.unlink()
    restarted = spawn_service(config, log_path)
    processes.append(restarted)
    assert wait_for(lambda: settled(port), timeout=15), log_path.read_text()
    restarted.terminate()
    assert restarted.wait(timeout=20) == 0
    result = tally(crm, baseline + during)
    report("full disk, SIGTERM, restart", result, started)
    assert_each_call_once(result, stopping)


# --- 2. a read-only disk ------------------------------------------------------------------------------

def test_given_state_disk_turns_read_only_when_calls_finish_then_service_degrades_and_nothing_lost(
        fakes, ext4, tmp_path, processes):
    started = time.monotonic()
    fs, crm = fakes
    port = free_port()
    config = service_toml(tmp_path, fs, crm, ext4.mount_point / "state", port)
    log_path = tmp_path / "service.log"
    proc = spawn_service(config, log_path)
    processes.append(proc)
    assert fs.wait_subscribed(timeout=20), log_path.read_text()
    baseline = play_calls(fs, "ro-base", 1)
    assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=15), log_path.read_text()
    crm.set_mode("down")
    pending = play_calls(fs, "ro-pending", 1)
    assert wait_for(lambda: healthz(port)[1]["outbox"]["pending"] == 1, timeout=10)

    ext4.go_read_only()
    crm.set_mode("ok")
    during = play_calls(fs, "ro-during", 4)
    seen = []

    def degraded():
        status, body = healthz(port)
        seen.append((status, body))
        return status == 503 and body.get("state", {}).get("unsaved_finished_calls") == len(during)

    assert wait_for(degraded, timeout=10), seen[-1:]
    state = seen[-1][1]["state"]
    print("\n/healthz while read-only: %s" % json.dumps(state))
    # SQLite reports EROFS on a write as an I/O error.
    assert "disk I/O error" in state["last_error"] or "readonly" in state["last_error"], state
    assert crm.wait_for(lambda: cards_arrived(crm, during), timeout=10)
    assert proc.poll() is None

    # The way back. This kernel keeps an ext4 that failed read-only until it is unmounted
    # ("emergency_ro"), and it cannot be unmounted while fs-crm holds the outbox open: the
    # operator stops fs-crm, checks the file system, mounts it again and starts fs-crm.
    remount = _run("mount", "-o", "remount,rw", str(ext4.mount_point))
    print("mount -o remount,rw: rc %d %s; options %s" % (remount.returncode, remount.stderr.strip(),
                                                          ext4.options()))
    stopping = []
    if remount.returncode == 0 and ext4.writable():
        assert wait_for(lambda: settled(port), timeout=15), log_path.read_text()
        proc.terminate()
        assert proc.wait(timeout=20) == 0
    else:
        proc.terminate()
        code = proc.wait(timeout=20)
        log = log_path.read_text()
        stopping = [line for line in log.splitlines() if "fs-crm stopping with" in line]
        print("exit code %d; %s" % (code, stopping))
        assert code == 0, log
        assert "Traceback" not in log
        ext4.unmount()
        fsck = _run("e2fsck", "-fy", str(ext4.image))
        assert fsck.returncode in (0, 1), fsck.stdout + fsck.stderr  # 1: errors corrected
        ext4.mount()
        restarted = spawn_service(config, log_path)
        processes.append(restarted)
        assert wait_for(lambda: settled(port), timeout=15), log_path.read_text()
        restarted.terminate()
        assert restarted.wait(timeout=20) == 0
    result = tally(crm, baseline + pending + during)
    report("read-only disk", result, started)
    assert_each_call_once(result, stopping)


# --- 3. the outbox locked by another process ------------------------------------------------------------

# Another process (a stray sqlite3 shell, a backup tool) holds the outbox's write lock until told to let go.
LOCKER = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
db.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("ROLLBACK")
"""


class Locker:
    def __init__(self, path: Path):
        self.proc = subprocess.Popen([sys.executable, "-c", LOCKER, str(path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE)
        assert self.proc.stdout.readline() == b"locked\n"

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write(b"\n")
            self.proc.stdin.flush()
        assert self.proc.wait(timeout=10) == 0


def timed_healthz(port: int, latencies: list[float]) -> tuple[int, dict]:
    began = time.monotonic()
    answer = healthz(port, timeout=30.0)
    latencies.append(time.monotonic() - began)
    return answer


def run_locked(fakes, tmp_path, caplog, monkeypatch, busy_timeout_ms: int, hold_s: float):
    """Calls finish while another process holds the outbox locked for `hold_s`, longer than fs-crm's
    busy timeout; /healthz is asked all along. Returns the tally, /healthz latencies and answers."""
    caplog.set_level(logging.INFO)
    monkeypatch.setattr("fs_crm.store.outbox.BUSY_TIMEOUT_MS", busy_timeout_ms)  # read when the outbox opens
    fs, crm = fakes
    port = free_port()
    latencies: list[float] = []
    answers: list[tuple[int, dict]] = []
    with in_process_service(fs, crm, tmp_path / "state", port) as svc:
        baseline = play_calls(fs, "lock-base", 1)
        assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=10)
        locker = Locker(svc.outbox.path)
        try:
            locked_at = time.monotonic()
            during = play_calls(fs, "lock-during", 4)
            assert crm.wait_for(lambda: cards_arrived(crm, during), timeout=10)
            while time.monotonic() - locked_at < hold_s:
                answers.append(timed_healthz(port, latencies))
                wait_for(lambda: False, timeout=0.1)  # a monitoring system asking ten times a second
        finally:
            locker.release()
        produced = baseline + during
        assert crm.wait_for(lambda: tally(crm, produced).lost == 0, timeout=15), tally(crm, produced)
        assert wait_for(lambda: settled(port), timeout=10)
        assert svc.failure is None
    return tally(crm, produced), latencies, answers


def test_given_outbox_locked_by_another_process_when_released_then_every_call_delivered_once(
        fakes, tmp_path, caplog, monkeypatch, capfd):
    started = time.monotonic()
    result, latencies, answers = run_locked(fakes, tmp_path, caplog, monkeypatch, busy_timeout_ms=500, hold_s=2.5)
    assert "Traceback" not in capfd.readouterr().err
    report("database is locked", result, started)
    print("/healthz while locked: %d answers, slowest %.2f s" % (len(latencies), max(latencies)))
    assert_each_call_once(result)
    # The lock outlived the busy timeout, so the saver really failed, and said why.
    failing = [body["state"] for status, body in answers if status == 503]
    assert failing and "database is locked" in failing[-1]["last_error"], answers[-1:]
    assert "state disk failing, nothing is lost" in caplog.text
    assert max(latencies) < 2.0, latencies


def test_given_store_thread_waiting_on_a_lock_when_healthz_asked_then_it_answers_within_2_s(
        fakes, tmp_path, caplog, monkeypatch):
    started = time.monotonic()
    # A busy timeout longer than the bound, still well short of production's 10 s.
    result, latencies, _ = run_locked(fakes, tmp_path, caplog, monkeypatch, busy_timeout_ms=3000, hold_s=3.5)
    report("database is locked, 3 s busy timeout", result, started)
    print("/healthz while locked: %d answers, slowest %.2f s" % (len(latencies), max(latencies)))
    assert_each_call_once(result)
    if max(latencies) >= 2.0:
        raise HealthzSlow("/healthz took %.1f s" % max(latencies), latencies)


# --- 4. memory is bounded while the disk fails -----------------------------------------------------------

def spilled_calls(caplog) -> dict[str, dict]:
    """Finished calls the service gave to its log in full: externalId -> the call as the CRM would get it."""
    spilled = {}
    for record in caplog.records:
        if record.levelno == logging.CRITICAL and "kept only in this log line" in record.getMessage():
            call = json.loads(record.getMessage().rsplit(": ", 1)[1])
            spilled[call["externalId"]] = call
    return spilled


def test_given_disk_full_and_more_finished_calls_than_memory_keeps_then_the_oldest_are_logged_in_full(
        fakes, tmpfs, caplog, monkeypatch, capfd):
    started = time.monotonic()
    caplog.set_level(logging.INFO)
    # MAX_UNSAVED_FINISHED is only the default of StateSaver's max_unsaved, bound when the module was
    # loaded, and the service builds its saver with that default: the bound is given here instead.
    monkeypatch.setattr("fs_crm.service.StateSaver", functools.partial(StateSaver, max_unsaved=3))
    fs, crm = fakes
    port = free_port()
    with in_process_service(fs, crm, tmpfs / "state", port) as svc:
        baseline = play_calls(fs, "spill-base", 1)
        assert crm.wait_for(lambda: len(crm.calls) == 1, timeout=10)
        filler = fill(tmpfs)
        during = play_calls(fs, "spill-first", 1)
        # The disk is known to fail before the others come (the bound also applies to a healthy disk,
        # to calls that finish between two saves).
        assert wait_for(lambda: healthz(port)[1]["state"]["ok"] is False, timeout=10)
        assert not spilled_calls(caplog)
        later = play_calls(fs, "spill-later", 6)
        during += later
        during.carded |= later.carded
        assert wait_for(lambda: len(spilled_calls(caplog)) == 4, timeout=10), caplog.text[-2000:]
        status, body = healthz(port)
        assert status == 503 and body["state"]["ok"] is False, body
        assert (body["state"]["unsaved_finished_calls"], body["state"]["spilled_to_log"]) == (3, 4), body
        spilled = spilled_calls(caplog)
        assert list(spilled) == during[:4]  # the oldest go to the log
        assert all(call["phone"] and call["date"] and call["result"] for call in spilled.values())
        assert crm.wait_for(lambda: cards_arrived(crm, during), timeout=10)

        filler.unlink()
        assert crm.wait_for(lambda: set(during[4:]) <= {c["externalId"] for c in crm.calls}, timeout=15)
        assert wait_for(lambda: settled(port), timeout=10)
        assert svc.failure is None
    assert "Traceback" not in capfd.readouterr().err
    result = tally(crm, baseline + during)
    report("full disk, memory bound 3", result, started)
    print("spilled to the log in full: %d (%s)" % (len(spilled), ", ".join(spilled)))
    # Each call is either in the CRM or, in full, in the log: never in both, never in neither.
    assert result.duplicated == 0
    assert result.lost == len(spilled) == 4
    assert not set(spilled) & {c["externalId"] for c in crm.calls}
