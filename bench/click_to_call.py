"""Click-to-call response time: the CRM's GET /make-call -> fs-crm's "OK <uuid>" answer.

What is measured: for each request, the wall time (time.perf_counter() in this process) from just
before requests' Session.get() to the moment the whole answer has been read. fs-crm answers only
once FreeSWITCH accepted the originate: in between it checks the manager's registration
(`api sofia_contact */<ext>@pbx.test`) and queues the call (`bgapi originate ...`), two round trips
on its command connection to the fake FreeSWITCH.

How: the real service runs as a subprocess (`python -m fs_crm run -c <toml>`, API key from
FS_CRM_ACCOUNT_SHOP_API_KEY, log level INFO as shipped, HTTP on a fixed free loopback port, routing
on 127.0.0.1:0) against a FakeFreeswitch (extensions 100 and 200 registered, originate jobs
answered "+OK <uuid>") and a FakeCrm on loopback in this process. After WARMUP_REQUESTS, REQUESTS
valid requests go out one after the other over one kept-alive requests.Session, then REQUESTS more
from CLIENTS concurrent clients (one kept-alive Session each). Each request names another customer
phone and alternates the manager between 100/user 1 and 200/user 2.

Checked (the exit status is non-zero otherwise): every answer is 200 "OK <uuid>", and the fake
FreeSWITCH received exactly one `bgapi originate` per request, carrying that uuid, that phone and
that manager's extension. The figure is an upper bound of fs-crm's own share: it also holds loopback
HTTP through requests and the fake FreeSWITCH's replies, scheduled in this process. The fake does
not play the calls' channel events, so the event side of the service stays idle.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections import Counter  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import requests  # noqa: E402
from common import (  # noqa: E402
    ACCOUNT,
    API_KEY,
    banner,
    figure,
    log_problems,
    own_cpu_seconds,
    percentile,
    print_problems,
    result,
    service_cpu_seconds,
    shut_down,
)

from fs_crm.config import api_key_env_name  # noqa: E402
from fs_crm.sim import free_port, wait_for  # noqa: E402
from fs_crm.sim.config import DOMAIN, sim_config, to_toml  # noqa: E402
from fs_crm.sim.fake_crm import FakeCrm  # noqa: E402
from fs_crm.sim.fake_freeswitch import FakeFreeswitch  # noqa: E402

WARMUP_REQUESTS = 50
REQUESTS = 1000          # per pass
CLIENTS = 10             # concurrent clients of the second pass
REQUEST_TIMEOUT = 5.0
GOAL_P99_MS = 100.0
CLIENT_ID = "client-1"
MANAGERS = (("100", "1"), ("200", "2"))  # (extension, CRM user id), as in the sim config
REGISTERED = {"100", "200"}
_ORIGINATION_UUID = re.compile(r"origination_uuid=([0-9a-f-]{36})")


def sofia_contact(args: str) -> str:
    """`sofia_contact */<ext>@<domain>`: a contact for 100 and 200, not registered otherwise."""
    user = args.split("/", 1)[-1].split("@", 1)[0]
    return "sofia/internal/sip:%s@127.0.0.1:5071" % user if user in REGISTERED else "error/user_not_registered"


def originate_job(text: str) -> str:
    """What FreeSWITCH's originate answers once the call is up: +OK and the channel's UUID."""
    found = _ORIGINATION_UUID.search(text)
    return "+OK %s\n" % (found.group(1) if found else "00000000-0000-0000-0000-000000000000")




class Load:
    """Sends requests and keeps what each one was and got: number -> (phone, extension, status, text, ms)."""

    def __init__(self, port: int):
        self.url = "http://127.0.0.1:%d/make-call" % port
        self.sent: dict[int, tuple[str, str, int | str, str, float]] = {}
        self.next_number = 0

    def params(self, number: int) -> tuple[dict[str, str], str, str]:
        extension, user_id = MANAGERS[number % len(MANAGERS)]
        phone = "7912%07d" % number
        return {"clientId": CLIENT_ID, "code": extension, "phone": phone, "userId": user_id}, phone, extension

    def one(self, session: requests.Session, number: int) -> float:
        params, phone, extension = self.params(number)
        started = time.perf_counter()
        try:
            answer = session.get(self.url, params=params, timeout=REQUEST_TIMEOUT)
            status, text = answer.status_code, answer.text
        except requests.RequestException as exc:
            status, text = type(exc).__name__, str(exc)[:200]
        elapsed_ms = (time.perf_counter() - started) * 1000
        self.sent[number] = (phone, extension, status, text, elapsed_ms)
        return elapsed_ms

    def take(self) -> int:
        number, self.next_number = self.next_number, self.next_number + 1
        return number

    def sequential(self, count: int) -> list[float]:
        with requests.Session() as session:
            return [self.one(session, self.take()) for _ in range(count)]

    def concurrent(self, count: int, clients: int) -> list[float]:
        last = self.next_number + count
        times: list[float] = []

        def client() -> None:
            with requests.Session() as session:
                while self.next_number < last:
                    times.append(self.one(session, self.take()))

        gevent.joinall([gevent.spawn(client) for _ in range(clients)], raise_error=True)
        return times


def check_originates(load: Load, fs: FakeFreeswitch) -> list[str]:
    """Problems: answers other than 200 "OK <uuid>", and requests without exactly one matching originate."""
    problems: list[str] = []
    originates = [cmd for _, cmd in list(fs.commands) if cmd.startswith("bgapi originate ")]
    by_uuid: dict[str, list[str]] = {}
    for command in originates:
        found = _ORIGINATION_UUID.search(command)
        by_uuid.setdefault(found.group(1) if found else "?", []).append(command)
    answered = Counter()
    for number, (phone, extension, status, text, _ms) in sorted(load.sent.items()):
        words = text.split()
        if status != 200 or len(words) != 2 or words[0] != "OK":
            problems.append("request %d: HTTP %s %r" % (number, status, text.strip()[:80]))
            continue
        call_uuid = words[1]
        answered[call_uuid] += 1
        commands = by_uuid.get(call_uuid, [])
        if len(commands) != 1:
            problems.append("request %d (call %s): %d originates" % (number, call_uuid, len(commands)))
        elif ("crm_phone=%s," % phone not in commands[0]
              or "}user/%s@%s " % (extension, DOMAIN) not in commands[0]):
            problems.append("request %d (call %s): originate for another call: %s" % (number, call_uuid,
                                                                                   commands[0][:160]))
    problems += ["call %s answered %d times" % (u, n) for u, n in answered.items() if n > 1]
    stray = [u for u in by_uuid if u not in answered]
    if stray:
        problems.append("%d originate(s) no answer named, e.g. %s" % (len(stray), stray[0]))
    if len(originates) != len(load.sent):
        problems.append("%d requests but %d `bgapi originate` commands" % (len(load.sent), len(originates)))
    return problems


def report_pass(label: str, times: list[float], seconds: float, cpu_service: float, cpu_own: float) -> None:
    print()
    figure(label, "%d requests in %.2f s (%.0f/s)" % (len(times), seconds, len(times) / seconds))
    figure("  response time p50", "%.1f ms" % percentile(times, 50))
    figure("  response time p90", "%.1f ms" % percentile(times, 90))
    figure("  response time p99", "%.1f ms" % percentile(times, 99), "< %.0f ms" % GOAL_P99_MS)
    figure("  response time max", "%.1f ms" % max(times))
    figure("  response time mean", "%.1f ms" % (sum(times) / len(times)))
    figure("  service CPU", "%.0f%% of one core, %.2f ms per request"
           % (100 * cpu_service / seconds, 1000 * cpu_service / len(times)))
    figure("  bench process CPU (client + fakes)", "%.0f%% of one core" % (100 * cpu_own / seconds))
    sys.stdout.flush()


def main() -> int:
    banner("bench/click_to_call.py: click-to-call response time (real service as a subprocess)",
           "GET /make-call sent -> 200 \"OK <uuid>\" read (sofia_contact + bgapi originate inside)")
    figure("requests", "%d warm-up, then %d sequential (1 kept-alive session), then %d from %d concurrent clients"
           % (WARMUP_REQUESTS, REQUESTS, REQUESTS, CLIENTS))

    work = Path(tempfile.mkdtemp(prefix="fs-crm-bench-c2c-"))
    crm = FakeCrm(api_keys={API_KEY: ACCOUNT}, known_codes={"100", "200", "300"},
                  known_sites={"shop1", "shop2"}).start()
    fs = FakeFreeswitch().start()
    fs.api_handlers["sofia_contact"] = sofia_contact
    fs.bgapi_handler = originate_job
    http_port = free_port()
    log_path = work / "service.log"
    config_path = work / "fs-crm.toml"
    config_path.write_text(to_toml(sim_config(fs.host, fs.port, crm.url, work / "state", api_key=API_KEY,
                                              account=ACCOUNT, client_id=CLIENT_ID, http_port=http_port)))
    env = dict(os.environ, **{api_key_env_name(ACCOUNT): API_KEY})
    log = open(log_path, "ab")
    service = subprocess.Popen([sys.executable, "-m", "fs_crm", "run", "-c", str(config_path)],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    load = Load(http_port)
    problems: list[str] = []
    measured: list[tuple[str, list[float]]] = []
    exit_code: int | None = None
    try:
        started = time.monotonic()

        def http_up() -> bool:
            try:
                return requests.get("http://127.0.0.1:%d/healthz" % http_port, timeout=1).status_code == 200
            except requests.RequestException:
                return False

        if not (fs.wait_subscribed(timeout=30) and wait_for(http_up, timeout=10, interval=0.05)):
            raise SystemExit("the service did not come up; log: %s" % log_path)
        figure("service connected and serving HTTP after", "%.2f s" % (time.monotonic() - started))

        warm = load.sequential(WARMUP_REQUESTS)
        figure("warm-up", "%d requests, first %.1f ms (opens the command connection), max of the rest %.1f ms"
               % (len(warm), warm[0], max(warm[1:])))

        for label, run in (("sequential pass (1 client)", lambda: load.sequential(REQUESTS)),
                           ("concurrent pass (%d clients)" % CLIENTS, lambda: load.concurrent(REQUESTS, CLIENTS))):
            cpu_service, cpu_own, begin = service_cpu_seconds(service.pid), own_cpu_seconds(), time.perf_counter()
            times = run()
            seconds = time.perf_counter() - begin
            report_pass(label, times, seconds, service_cpu_seconds(service.pid) - cpu_service,
                        own_cpu_seconds() - cpu_own)
            measured.append((label, times))

        # Every originate was written before its 200; give any late duplicate a moment to show up.
        gevent.sleep(0.3)
        problems = check_originates(load, fs)
        originates = sum(1 for _, cmd in list(fs.commands) if cmd.startswith("bgapi originate "))
        statuses = Counter(status for _, _, status, _, _ in load.sent.values())
        print()
        figure("requests sent (warm-up included)", str(len(load.sent)))
        figure("answers by status", ", ".join("%s: %d" % item for item in sorted(statuses.items(), key=str)))
        figure("`bgapi originate` received by the fake FreeSWITCH", "%d (%s)" % (
            originates, "exactly one per request, each with its uuid, phone and extension" if not problems
            else "MISMATCH"))
        figure("`api sofia_contact` received", str(sum(1 for _, cmd in list(fs.commands)
                                                       if cmd.startswith("api sofia_contact "))))
        print_problems(problems)
    finally:
        exit_code, stopped_in = shut_down(service, log, fs, crm)

    warnings = log_problems(log_path)
    figure("service exit after SIGTERM", "code %s in %.2f s" % (exit_code, stopped_in), "0, clean")
    figure("service log WARNING/ERROR lines", str(len(warnings)))
    for line in warnings[:5]:
        print("    %s" % line[:200])
    clean = exit_code == 0 and not problems and len(measured) == 2
    if clean:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("  service log kept in %s" % log_path)
    for label, times in measured:
        result("click_to_call %s: p50 %.1f ms, p90 %.1f ms, p99 %.1f ms (goal < %.0f ms), max %.1f ms over %d"
               % (label, percentile(times, 50), percentile(times, 90), percentile(times, 99), GOAL_P99_MS,
                  max(times), len(times)))
    result("click_to_call checks: %s; service exit %s" % (
        "every answer 200, exactly one originate per request" if not problems
        else "FAILED (%d problems)" % len(problems), exit_code))
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
