"""Recording playback from S3: what retailCRM's player gets through our playback app versus S3 itself.

Three processes, all on 127.0.0.1: moto's real S3 server (tests/moto_s3.py's MotoProcess), the real
playback app (recordings.playback.make_app over S3Store + TokenCodec, served by fs_crm.web.server.HttpServer as
fs_crm.web.server does, logging at INFO as shipped), and this process as the client. They never share a
gevent hub, and each one's CPU time is read from /proc. moto holds whole objects in memory on every
GET, which is its business, not ours: the memory figures are those of the playback process only.

What is measured, in one run:
1. one 10 MB recording (random bytes, audio/wav) streamed through the playback app versus a direct
   boto3 GET of the same object from the same moto, REPETITIONS of each, alternating; both read with
   streaming in CHUNK-sized pieces. MB/s best and median, and their ratio playback/direct.
2. CONCURRENCY simultaneous playbacks of the 10 MB object, then of a 30 MB and a 1 MB one, each size
   on a fresh playback process; every client reads its first chunk and waits for all the others to
   have theirs before reading on, so the app really holds CONCURRENCY streams open at once. Wall time
   (opening all of them included), aggregate MB/s, and the playback process's RSS before (VmRSS) and
   its peak (VmHWM) after. Streaming means the peak must not grow with the file size: 30 MB against
   10 MB, both far above the app's largest chunk. Files smaller than a chunk need less.
3. RANGE_REQUESTS sequential small Range requests (bytes=1000-1999) on one keep-alive connection:
   latency p50/p99, with a direct boto3 ranged GET interleaved as the reference.

Correctness (printed; exit status 1 if it fails): every answer was 200/206 with the expected
Content-Length and body length, audio/wav, and the bodies of one full playback and of every range
answer are the very bytes uploaded. Timings are printed, never asserted.
"""

from gevent import monkey

monkey.patch_all()

import datetime as dt  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402
from statistics import median  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.pool  # noqa: E402
import requests  # noqa: E402
from common import ACCOUNT, banner, figure, percentile, result, service_cpu_seconds  # noqa: E402

from recordings.tokens import TokenCodec, recording_name  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.append(str(ROOT / "tests"))  # appended, so nothing of ours is shadowed
from moto_s3 import BUCKET, FOREIGN_AWS_SETTINGS, REGION, MotoProcess, admin_client, fake_aws_environment  # noqa: E402

MB = 1024 * 1024
BIG = 10 * MB
LONG = 30 * MB  # three times BIG, both far above the largest chunk: the two should need the same memory
SMALL = 1 * MB
CHUNK = 64 * 1024  # what the client reads per iteration, both ways (the app's CHUNK_SIZE too)
REPETITIONS = 15
CONCURRENCY = 50
RANGE_REQUESTS = 200
RANGE = (1000, 1999)
CLIENT_ID = "client-1"
URL_SECRET = os.urandom(32)
REQUEST_TIMEOUT = 10.0
CONCURRENT_DEADLINE = 30.0
BARRIER_TIMEOUT = 15.0
GOAL_RATIO = 0.8

# The playback process: the product's pieces exactly as fs_crm.service/fs_crm.web.server put them together.
_PLAYBACK_CHILD = """
from gevent import monkey
monkey.patch_all()
import logging, sys
from gevent.socket import wait_read
from fs_crm.config import HttpConfig
from fs_crm.web.server import HttpServer, build_app
from recordings.playback import make_app
from recordings.s3 import S3Store
from recordings.tokens import TokenCodec
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
logging.getLogger("urllib3").setLevel(logging.WARNING)  # as fs_crm.cli does
endpoint, bucket, region, secret, account, client_id = sys.argv[1:7]
store = S3Store(bucket, region=region, endpoint_url=endpoint)
app = build_app(lambda: (True, {}), make_app(store, TokenCodec(bytes.fromhex(secret)), {account: client_id}))
server = HttpServer(HttpConfig(listen_host="127.0.0.1", listen_port=0), app)  # as `fs-crm playback` serves
server.start()
print(server.port, flush=True)
wait_read(sys.stdin.fileno())  # serve until the benchmark closes our stdin (or dies)
server.stop()
"""


# --- processes ------------------------------------------------------------------------------------

def use_fake_aws_credentials(work: Path) -> None:
    """The tests' fake credentials, in this process's environment (inherited by the children)."""
    for name in FOREIGN_AWS_SETTINGS:
        os.environ.pop(name, None)
    os.environ.update(fake_aws_environment(work))


class PlaybackProcess:
    def __init__(self, endpoint: str, log_path: Path):
        self.log_path = log_path
        self._log = open(log_path, "ab")
        self.proc = subprocess.Popen([sys.executable, "-c", _PLAYBACK_CHILD, endpoint, BUCKET, REGION, URL_SECRET.hex(),
                                      ACCOUNT, CLIENT_ID], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self._log, cwd=ROOT)
        line = b""
        with gevent.Timeout(30, False):
            line = self.proc.stdout.readline()
        if not line.strip():
            self.stop()
            raise RuntimeError("playback server did not start: %s" % log_path.read_text(errors="replace")[-2000:])
        self.pid = self.proc.pid
        self.base = "http://127.0.0.1:%d/records/" % int(line)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self._log.close()


def proc_status_kib(pid: int, field: str) -> int:
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


class CpuMeter:
    """CPU seconds used by each named process between start() and stop()."""

    def __init__(self, pids: dict[str, int]):
        self.pids = pids
        self.used: dict[str, float] = {}

    def __enter__(self) -> "CpuMeter":
        self._start = {name: service_cpu_seconds(pid) for name, pid in self.pids.items()}
        return self

    def __exit__(self, *exc) -> None:
        self.used = {name: service_cpu_seconds(pid) - self._start[name] for name, pid in self.pids.items()}

    def text(self) -> str:
        return ", ".join("%s %.2f s" % item for item in self.used.items())


# --- requests -------------------------------------------------------------------------------------

class Checks:
    def __init__(self):
        self.count = 0
        self.failures: list[str] = []

    def expect(self, ok: bool, what: str) -> None:
        self.count += 1
        if not ok and len(self.failures) < 1000:
            self.failures.append(what)


def playback(session: requests.Session, url: str, size: int, checks: Checks, label: str,
             byte_range: tuple[int, int] | None = None, keep: bool = False) -> tuple[int, bytes]:
    """One streamed GET through the app: (bytes read, the body when keep)."""
    headers = {"Range": "bytes=%d-%d" % byte_range} if byte_range else None
    expected_status, expected = (206, byte_range[1] - byte_range[0] + 1) if byte_range else (200, size)
    read, kept = 0, []
    with session.get(url, params={"clientId": CLIENT_ID}, headers=headers, stream=True,
                     timeout=REQUEST_TIMEOUT) as response:
        for chunk in response.iter_content(CHUNK):
            read += len(chunk)
            if keep:
                kept.append(chunk)
        checks.expect(response.status_code == expected_status and read == expected
                      and response.headers.get("Content-Length") == str(expected)
                      and response.headers.get("Content-Type") == "audio/wav",
                      "%s: status %d, %d bytes read, Content-Length %s, Content-Type %s (wanted %d, %d bytes)"
                      % (label, response.status_code, read, response.headers.get("Content-Length"),
                         response.headers.get("Content-Type"), expected_status, expected))
    return read, b"".join(kept)


def direct(s3, key: str, size: int, checks: Checks, label: str, byte_range: tuple[int, int] | None = None) -> int:
    """One streamed GET of the object straight from S3 with boto3."""
    extra = {"Range": "bytes=%d-%d" % byte_range} if byte_range else {}
    response = s3.get_object(Bucket=BUCKET, Key=key, **extra)
    read = sum(len(chunk) for chunk in response["Body"].iter_chunks(CHUNK))
    expected = byte_range[1] - byte_range[0] + 1 if byte_range else size
    status = response["ResponseMetadata"]["HTTPStatusCode"]
    checks.expect(status in (200, 206) and read == expected, "%s: status %d, %d bytes (wanted %d)"
                  % (label, status, read, expected))
    return read


def upload(s3, size: int) -> str:
    name = recording_name(ACCOUNT, str(uuid.uuid4()), dt.date(2026, 11, 26), "wav")
    s3.put_object(Bucket=BUCKET, Key=name, Body=os.urandom(size), ContentType="audio/wav")
    return name


def mbps(size: int, seconds: float) -> float:
    return size / MB / seconds


# --- the three measurements -----------------------------------------------------------------------

def single_stream(server: PlaybackProcess, s3, url: str, key: str, data: bytes, pids: dict[str, int],
                  checks: Checks) -> float:
    session = requests.Session()
    _, body = playback(session, url, BIG, checks, "full-content playback", keep=True)
    checks.expect(body == data, "full-content playback: body differs from the uploaded bytes")
    del body
    times: dict[str, list[float]] = {"playback": [], "direct": []}
    with CpuMeter(pids) as meter:
        for rep in range(REPETITIONS):
            order = ("playback", "direct") if rep % 2 == 0 else ("direct", "playback")
            for way in order:
                started = time.perf_counter()
                if way == "playback":
                    playback(session, url, BIG, checks, "single playback %d" % rep)
                else:
                    direct(s3, key, BIG, checks, "single direct %d" % rep)
                times[way].append(time.perf_counter() - started)
    session.close()
    best = {way: mbps(BIG, min(t)) for way, t in times.items()}
    mid = {way: mbps(BIG, median(t)) for way, t in times.items()}
    ratio = mid["playback"] / mid["direct"]
    figure("playback app, MB/s best / median", "%.0f / %.0f  (%.0f / %.0f ms per file)"
           % (best["playback"], mid["playback"], 1000 * min(times["playback"]), 1000 * median(times["playback"])))
    figure("direct boto3 GET, MB/s best / median", "%.0f / %.0f  (%.0f / %.0f ms per file)"
           % (best["direct"], mid["direct"], 1000 * min(times["direct"]), 1000 * median(times["direct"])))
    figure("ratio playback / direct (medians; bests)", "%.2f; %.2f" % (ratio, best["playback"] / best["direct"]),
           ">= %.1f" % GOAL_RATIO)
    figure("CPU during the %d + %d streams" % (REPETITIONS, REPETITIONS), meter.text())
    return ratio


def concurrent(server: PlaybackProcess, url: str, size: int, moto_pid: int, checks: Checks) -> dict:
    """CONCURRENCY simultaneous playbacks on a warmed-up playback process. Each client reads its
    first chunk, then waits until every one of them has, then reads the rest: so the playback
    process really holds CONCURRENCY open streams (client connection + S3 response) at once."""
    session = requests.Session()
    session.mount("http://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=CONCURRENCY))
    # Warm-up: credentials resolved, boto3 client made, both code paths (ranged and whole) run once.
    for _ in range(3):
        playback(session, url, size, checks, "warm-up", byte_range=RANGE)
    playback(session, url, size, checks, "warm-up")
    rss_before = proc_status_kib(server.pid, "VmRSS")
    hwm_before = proc_status_kib(server.pid, "VmHWM")
    streaming = [0, 0]  # now, most at once
    all_open = gevent.event.Event()
    opened: list[float] = []
    durations: list[float] = []

    def one(i: int) -> None:
        started = time.perf_counter()
        with session.get(url, params={"clientId": CLIENT_ID}, stream=True, timeout=REQUEST_TIMEOUT) as response:
            chunks = response.iter_content(CHUNK)
            read = len(next(chunks, b""))
            opened.append(time.perf_counter() - started)
            streaming[0] += 1
            streaming[1] = max(streaming)
            if len(opened) == CONCURRENCY:
                all_open.set()
            all_open.wait(timeout=BARRIER_TIMEOUT)
            try:
                for chunk in chunks:
                    read += len(chunk)
            finally:
                streaming[0] -= 1
            checks.expect(response.status_code == 200 and read == size
                          and response.headers.get("Content-Length") == str(size),
                          "concurrent %d of %d bytes: status %d, %d bytes read"
                          % (i, size, response.status_code, read))
        durations.append(time.perf_counter() - started)

    pool = gevent.pool.Pool(CONCURRENCY)
    with CpuMeter({"client": os.getpid(), "playback": server.pid, "moto": moto_pid}) as meter:
        started = time.perf_counter()
        jobs = [pool.spawn(one, i) for i in range(CONCURRENCY)]
        gevent.joinall(jobs, timeout=CONCURRENT_DEADLINE)
        wall = time.perf_counter() - started
    for job in jobs:
        if not job.ready():
            job.kill(block=False)
        checks.expect(job.successful(), "concurrent playback of %d bytes raised %r" % (size, job.exception))
    session.close()
    return {"wall": wall, "mbps": mbps(size * len(durations), wall), "rss_before": rss_before / 1024,
            "hwm_before": hwm_before / 1024, "hwm": proc_status_kib(server.pid, "VmHWM") / 1024,
            "rss_after": proc_status_kib(server.pid, "VmRSS") / 1024, "most": streaming[1],
            "done": len(durations), "opened": opened, "durations": durations, "cpu": meter.text(),
            "moto_hwm": proc_status_kib(moto_pid, "VmHWM") / 1024}


def print_concurrent(label: str, size: int, run: dict) -> None:
    figure("%s: %d x %d MB, wall time" % (label, CONCURRENCY, size // MB),
           "%.2f s, %d completed, %d streams open at once" % (run["wall"], run["done"], run["most"]))
    figure("%s: aggregate MB/s" % label, "%.0f" % run["mbps"])
    if run["durations"]:
        figure("%s: first chunk p50/max (all open after); whole p50/max" % label, "%.0f/%.0f ms; %.2f/%.2f s"
               % (1000 * percentile(run["opened"], 50), 1000 * max(run["opened"]), percentile(run["durations"], 50),
                  max(run["durations"])))
    figure("%s: playback RSS before / peak (VmHWM) after" % label, "%.1f / %.1f MiB (+%.1f MiB; peak was %.1f before)"
           % (run["rss_before"], run["hwm"], run["hwm"] - run["rss_before"], run["hwm_before"]))
    figure("%s: CPU" % label, run["cpu"])


def ranges(server: PlaybackProcess, s3, url: str, key: str, data: bytes, checks: Checks) -> tuple[float, float]:
    session = requests.Session()
    want = data[RANGE[0]:RANGE[1] + 1]
    for _ in range(5):  # warm-up, not counted
        playback(session, url, BIG, checks, "range warm-up", byte_range=RANGE)
    ours: list[float] = []
    theirs: list[float] = []
    for i in range(RANGE_REQUESTS):
        started = time.perf_counter()
        _, body = playback(session, url, BIG, checks, "range %d" % i, byte_range=RANGE, keep=True)
        ours.append(time.perf_counter() - started)
        checks.expect(body == want, "range %d: body differs from the uploaded bytes" % i)
        started = time.perf_counter()
        direct(s3, key, BIG, checks, "direct range %d" % i, byte_range=RANGE)
        theirs.append(time.perf_counter() - started)
    session.close()
    p50, p99 = 1000 * percentile(ours, 50), 1000 * percentile(ours, 99)
    figure("playback Range bytes=%d-%d: p50 / p99 / max" % RANGE, "%.1f / %.1f / %.1f ms"
           % (p50, p99, 1000 * max(ours)))
    figure("direct boto3 ranged GET (reference): p50 / p99 / max", "%.1f / %.1f / %.1f ms"
           % (1000 * percentile(theirs, 50), 1000 * percentile(theirs, 99), 1000 * max(theirs)))
    return p50, p99


def main() -> int:
    banner("bench/playback.py: recording playback from S3 (moto) through the playback app",
           "moto S3, the playback app (gevent.pywsgi) and this client in three processes, on 127.0.0.1")
    work = Path(tempfile.mkdtemp(prefix="fs-crm-bench-playback-"))
    use_fake_aws_credentials(work)
    checks = Checks()
    moto = None
    servers: list[PlaybackProcess] = []
    started = time.monotonic()
    try:
        moto = MotoProcess(work / "moto.log")
        s3 = admin_client(moto.endpoint)
        s3.create_bucket(Bucket=BUCKET)
        big_key, long_key, small_key = upload(s3, BIG), upload(s3, LONG), upload(s3, SMALL)
        big_data = s3.get_object(Bucket=BUCKET, Key=big_key)["Body"].read()
        codec = TokenCodec(URL_SECRET)

        def serve(name: str) -> PlaybackProcess:
            servers.append(PlaybackProcess(moto.endpoint, work / ("playback-%s.log" % name)))
            return servers[-1]

        main_server = serve("main")
        big_url = main_server.base + codec.make(big_key)
        figure("objects", "%s (%d bytes), %s (%d bytes), %s (%d bytes), audio/wav"
               % (big_key, BIG, long_key, LONG, small_key, SMALL))

        print("\n1. one %d MB stream at a time, %d each way, alternating, %d KiB reads" % (BIG // MB, REPETITIONS,
                                                                                            CHUNK // 1024))
        pids = {"client": os.getpid(), "playback": main_server.pid, "moto": moto.proc.pid}
        ratio = single_stream(main_server, s3, big_url, big_key, big_data, pids, checks)

        print("\n2. %d concurrent playbacks, each size on a fresh playback process" % CONCURRENCY)
        runs = {}
        for label, size, key in (("10 MB", BIG, big_key), ("30 MB", LONG, long_key), ("1 MB", SMALL, small_key)):
            server = serve(label.replace(" ", ""))
            runs[label] = concurrent(server, server.base + codec.make(key), size, moto.proc.pid, checks)
            server.stop()
            print_concurrent(label, size, runs[label])
        growth = runs["30 MB"]["hwm"] - runs["10 MB"]["hwm"]
        figure("peak RSS 30 MB run / 10 MB run, difference", "%.1f / %.1f MiB, %+.1f MiB"
               % (runs["30 MB"]["hwm"], runs["10 MB"]["hwm"], growth), "no growth with file size")
        figure("peak RSS 1 MB run (files smaller than a big chunk)", "%.1f MiB" % runs["1 MB"]["hwm"])
        figure("peak RSS growth per open stream (10 MB run)", "%.0f KiB"
               % ((runs["10 MB"]["hwm"] - runs["10 MB"]["rss_before"]) * 1024 / CONCURRENCY))
        figure("for scale: holding the whole files would add", "%d MiB (10 MB run), %d MiB (30 MB run)"
               % (CONCURRENCY * BIG // MB, CONCURRENCY * LONG // MB))
        figure("moto's own peak RSS (holds whole objects; not ours)", "%.0f MiB" % runs["1 MB"]["moto_hwm"])

        print("\n3. %d sequential small Range requests, one keep-alive connection" % RANGE_REQUESTS)
        p50, p99 = ranges(main_server, s3, big_url, big_key, big_data, checks)
    finally:
        for server in servers:
            server.stop()
        if moto is not None:
            moto.stop()
    logs = "".join(path.read_text(errors="replace") for path in sorted(work.glob("playback-*.log")))
    shutil.rmtree(work, ignore_errors=True)

    print()
    pool_full = logs.count("Connection pool is full")
    problems = sum(1 for line in logs.splitlines() if " ERROR " in line or "Traceback" in line)
    figure("playback log: urllib3 'Connection pool is full' warnings", "%d (boto3's pool holds 10 connections)"
           % pool_full)
    figure("playback log: ERROR lines / tracebacks", str(problems), "0")
    ok = not checks.failures and problems == 0
    figure("correctness: %d answers 200/206, right length and type, bodies" % checks.count,
           "OK" if ok else "FAILED (%d)" % len(checks.failures))
    for failure in checks.failures[:10]:
        print("    " + failure)
    figure("wall time of the benchmark", "%.1f s" % (time.monotonic() - started))
    big, long, small = runs["10 MB"], runs["30 MB"], runs["1 MB"]
    result("playback: 10 MB stream %.2f x direct S3 GET (goal >= %.1f); %d concurrent: %.0f MB/s (10 MB), "
           "peak RSS %.1f MiB (30 MB files) vs %.1f MiB (10 MB), %+.1f MiB (%.1f MiB for 1 MB files); "
           "Range p50/p99 %.1f/%.1f ms; correct: %s"
           % (ratio, GOAL_RATIO, CONCURRENCY, big["mbps"], long["hwm"], big["hwm"], growth, small["hwm"], p50, p99,
              "OK" if ok else "FAILED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
