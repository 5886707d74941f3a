"""Routing decision time: FreeSWITCH hands an incoming call to fs-crm's outbound socket -> the decision arrives.

What is measured, on the fake FreeSWITCH's side (time.monotonic() of this process):
- t_open: just before the fake opens the TCP connection to [routing] listen, as the dialplan's
  `socket 127.0.0.1:<port> async full` does when the call reaches it;
- t_reply: when the fake's sendall() of the `connect` reply (the channel's CHANNEL_DATA) returned;
- t_decision: when the fake has read and parsed the `sendmsg` executing the decision: `bridge` to
  the manager in (a), the fallback `transfer` in (b) (in (a) the fallback `transfer` queued right
  behind the bridge is noted too).
"decision" is t_decision - t_open: everything the caller waits for, including the TCP connect, the
`connect` round trip and fs-crm's ring_ready/myevents/linger commands before it asks the CRM.
"after the connect reply" (t_decision - t_reply) is the span fs-crm's own CallRouter.decision_times
covers (it starts once `connect` returned); the service's log line "... in N ms" gives that one too.

How: the real service runs as a subprocess (`python -m fs_crm run -c <toml>`, API key from
FS_CRM_ACCOUNT_SHOP_API_KEY, log level INFO as shipped; [routing] listen on a free loopback port,
manager_timeout left at its default; the account has fallback "sales") against a FakeFreeswitch
(extensions 100 and 200 registered) and a FakeCrm on loopback in this process. Each call is the
recorded in_socket_route connect reply, renumbered (new UUIDs), with a caller id of its own (so its
CRM lookup can be matched to it) whose responsible manager in the fake CRM is user 1, extension 100.
(a) the CRM answers /api/v5/telephony/manager after MANAGER_DELAY_A (manager free and registered:
    bridge); (b) it answers after MANAGER_DELAY_B, far beyond the deadline (fallback transfer).
Calls start in waves of WAVE calls at once (they overlap), one wave every WAVE_PERIOD seconds; the
rate stays under fs-crm's 40/s telephony budget for the CRM, so the rate limiter never queues a
lookup. Once its decision (and, in (a), the queued fallback) has arrived, each call hangs up
(linger notice, goodbye, close) so the service's routing sessions end and do not pile up.

Checked (the exit status is non-zero otherwise): each call got exactly ring_ready then its expected
applications, every call's session was closed after the hangup, and the service exits 0 on SIGTERM.
"""

from gevent import monkey

monkey.patch_all()

import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import gevent  # noqa: E402
import gevent.event  # noqa: E402
import gevent.socket  # noqa: E402
from common import (  # noqa: E402
    ACCOUNT,
    API_KEY,
    banner,
    figure,
    own_cpu_seconds,
    percentile,
    print_problems,
    result,
    service_cpu_seconds,
    shut_down,
)

from fs_crm.config import RoutingConfig, api_key_env_name  # noqa: E402
from fs_crm.crm.client import MANAGER_PATH  # noqa: E402
from fs_crm.sim import free_port  # noqa: E402
from fs_crm.sim.config import sim_config, to_toml  # noqa: E402
from fs_crm.sim.fake_crm import FakeCrm  # noqa: E402
from fs_crm.sim.fake_freeswitch import (  # noqa: E402
    FakeFreeswitch,
    OutboundCall,
    capture_path,
    load_connect_reply,
    renumber_call,
)

CHANNEL = load_connect_reply(capture_path("in_socket_route.outbound_socket.txt"))
IVAN = {"id": 1, "firstName": "Ivan", "lastName": "Petrov", "code": "100"}
FALLBACK = "sales"
DEADLINE = RoutingConfig().manager_timeout   # [routing] manager_timeout is left at this default
CALLS = 200                   # per case
WARMUP_CALLS = 10
MANAGER_DELAY_A = 0.02
MANAGER_DELAY_B = 30.0        # "never answers": the fake CRM's handler is killed when the bench stops
WAVE = 5                      # calls started at once
# 25 and ~11 calls/s: below the 40 requests/s CRM budget. In (b) the period does not divide the
# deadline, so a wave's timeouts do not always fire just as a new wave arrives.
WAVE_PERIOD = {"a": 0.2, "b": 0.44}
DECIDE_WITHIN = DEADLINE + 5.0
GOAL_A_P99_MS = 100.0         # informational: a 20 ms CRM plus fs-crm's own round trips

RING = ("ring_ready", "")
TO_FALLBACK = ("transfer", "%s XML default" % FALLBACK)
EXPECTED = {
    "a": [RING, ("set", "hangup_after_bridge=true"), ("set", "continue_on_fail=true"),
          ("export", "crm_routed_to=100"), ("bridge", "user/100@pbx.test"), TO_FALLBACK],
    "b": [RING, TO_FALLBACK],
}
DECISION_APP = {"a": "bridge", "b": "transfer"}
# The service's own log line for each routed call (CallRouter.handle).
_LOGGED = re.compile(r"call (\S+) account \S+ caller \S+: (.*) in (\d+) ms$")


class TimedCall(OutboundCall):
    """An outbound session that notes when its connect reply went out and when each application arrived."""

    opened_at = 0.0
    caller = ""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.reply_at: float | None = None
        self.app_at: dict[str, float] = {}   # application -> when its first sendmsg was parsed
        self.transfer_seen = gevent.event.Event()

    def _connect(self) -> None:
        super()._connect()
        self.reply_at = time.monotonic()

    def _on_message(self, command) -> None:
        at, before = time.monotonic(), len(self.executed)
        super()._on_message(command)
        if len(self.executed) > before:
            app = self.executed[-1][0]
            self.app_at.setdefault(app, at)
            if app == "transfer":
                self.transfer_seen.set()


class TimedFreeswitch(FakeFreeswitch):
    def outbound_connect(self, host: str, port: int, connect_reply_body: bytes, *,
                         async_mode: bool = True, full: bool = True) -> TimedCall:
        """As FakeFreeswitch.outbound_connect, with a TimedCall and the moment the connection was opened."""
        opened_at = time.monotonic()
        sock = gevent.socket.create_connection((host, port), timeout=5)
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sessions_total += 1
        call = TimedCall(self, sock, self._sessions_total, connect_reply_body, async_mode, full)
        call.opened_at = opened_at
        self.outbound_calls.append(call)
        self._greenlets.spawn(call.serve)
        return call


def sofia_contact(args: str) -> str:
    user = args.split("/", 1)[-1].split("@", 1)[0]
    return "sofia/internal/sip:%s@127.0.0.1:5071" % user if user in {"100", "200"} else "error/user_not_registered"




def caller_of(seed: str, number: int) -> str:
    """Each call has a caller id of its own, so its CRM lookup can be told apart from the others'."""
    return "7912%s%05d" % ({"warm": "00", "a": "01", "b": "02"}[seed], number)


def connect_reply(seed: str, number: int) -> bytes:
    """The recorded connect reply with new UUIDs and this call's caller id."""
    data = renumber_call([CHANNEL], seed="%s-%d" % (seed, number))[0]
    return re.sub(rb"(?m)^Caller-Caller-ID-Number: .*$",
                  b"Caller-Caller-ID-Number: " + caller_of(seed, number).encode(), data)


def route_calls(fs: TimedFreeswitch, port: int, case: str, count: int, period: float, seed: str) -> list[TimedCall]:
    """`count` calls in waves of WAVE every `period` s; each hangs up once its decision arrived."""
    calls: list[TimedCall] = []

    def one(number: int) -> None:
        call = fs.outbound_connect("127.0.0.1", port, connect_reply(seed, number))
        call.caller = caller_of(seed, number)
        calls.append(call)
        call.transfer_seen.wait(timeout=DECIDE_WITHIN)
        call.hangup()
        call.wait_closed(timeout=5)

    begin = time.monotonic()
    players = []
    for number in range(count):
        gevent.sleep(max(0.0, begin + (number // WAVE) * period - time.monotonic()))
        players.append(gevent.spawn(one, number))
    gevent.joinall(players, timeout=DECIDE_WITHIN + 10)
    return calls


def decision_ms(calls: list[TimedCall], app: str, since: str) -> list[float]:
    return [(call.app_at[app] - (call.opened_at if since == "open" else call.reply_at)) * 1000
            for call in calls if app in call.app_at and call.reply_at is not None]


def lookups(crm: FakeCrm) -> dict[str, float]:
    """Caller id -> when its responsible-manager request reached the fake CRM (time.monotonic())."""
    seen: dict[str, float] = {}
    for request in list(crm.requests):
        if request.path == MANAGER_PATH:
            seen.setdefault(request.query.get("phone", ""), request.received_at)
    return seen


def breakdown(calls: list[TimedCall], crm: FakeCrm, app: str) -> None:
    """Where the time goes, per stage, p50 / p99 / max."""
    asked = lookups(crm)
    timed = [c for c in calls if c.caller in asked and app in c.app_at and c.reply_at is not None]
    if not timed:
        return
    stages = [
        ("opened -> connect reply written", [c.reply_at - c.opened_at for c in timed]),
        ("connect reply -> ring_ready read", [c.app_at["ring_ready"] - c.reply_at for c in timed]),
        ("connect reply -> CRM lookup received", [asked[c.caller] - c.reply_at for c in timed]),
        ("CRM lookup received -> %s read" % app, [c.app_at[app] - asked[c.caller] for c in timed]),
    ]
    for label, seconds in stages:
        values = [s * 1000 for s in seconds]
        figure("    " + label, "%.1f / %.1f / %.1f ms" % (percentile(values, 50), percentile(values, 99), max(values)))


def problems_of(calls: list[TimedCall], case: str, count: int) -> list[str]:
    problems = []
    if len(calls) != count:
        problems.append("%d of %d calls were placed" % (len(calls), count))
    for call in calls:
        if call.executed != EXPECTED[case]:
            problems.append("call %s: executed %r" % (call.uuid, call.executed))
        elif not call.closed:
            problems.append("call %s: still open after the hangup" % call.uuid)
    return problems


def stats(values: list[float]) -> str:
    return "%.1f / %.1f / %.1f / %.1f ms" % (percentile(values, 50), percentile(values, 90), percentile(values, 99),
                                             max(values))


def main() -> int:
    banner("bench/routing.py: routing decision time (real service as a subprocess)",
           "outbound socket opened by the fake FreeSWITCH -> the decision's sendmsg (bridge / transfer) read by it")
    figure("[routing] manager_timeout (deadline)", "%.3f s (the default)" % DEADLINE)
    figure("calls per case", "%d after %d warm-up calls, in waves of %d: (a) every %.1f s, (b) every %.1f s"
           % (CALLS, WARMUP_CALLS, WAVE, WAVE_PERIOD["a"], WAVE_PERIOD["b"]))

    work = Path(tempfile.mkdtemp(prefix="fs-crm-bench-routing-"))
    crm = FakeCrm(api_keys={API_KEY: ACCOUNT}, known_codes={"100", "200", "300"},
                  known_sites={"shop1", "shop2"}).start()
    crm.managers.update({caller_of(seed, n): IVAN for seed, count in (("warm", WARMUP_CALLS), ("a", CALLS), ("b", CALLS))
                         for n in range(count)})
    fs = TimedFreeswitch().start()
    fs.api_handlers["sofia_contact"] = sofia_contact
    routing_port = free_port()
    table = sim_config(fs.host, fs.port, crm.url, work / "state", api_key=API_KEY, account=ACCOUNT)
    table["routing"] = {"listen": "127.0.0.1:%d" % routing_port}
    table["accounts"][0]["fallback"] = FALLBACK
    log_path = work / "service.log"
    config_path = work / "fs-crm.toml"
    config_path.write_text(to_toml(table))
    env = dict(os.environ, **{api_key_env_name(ACCOUNT): API_KEY})
    log = open(log_path, "ab")
    service = subprocess.Popen([sys.executable, "-m", "fs_crm", "run", "-c", str(config_path)],
                               stdout=log, stderr=subprocess.STDOUT, env=env)
    problems: list[str] = []
    measured: dict[str, list[TimedCall]] = {}
    exit_code: int | None = None
    try:
        started = time.monotonic()
        # The service listens on [routing] before it connects to FreeSWITCH (Service.start); a probe
        # connection would count as a call that never answers `connect`.
        if not fs.wait_subscribed(timeout=30):
            raise SystemExit("the service did not come up; log: %s" % log_path)
        figure("service connected and listening after", "%.2f s" % (time.monotonic() - started))

        crm.manager_delay = MANAGER_DELAY_A
        warm = route_calls(fs, routing_port, "a", WARMUP_CALLS, WAVE_PERIOD["a"], "warm")
        problems += problems_of(warm, "a", WARMUP_CALLS)
        gevent.sleep(1.2)  # the warm-up's CRM requests leave the rate limiter's window

        for case, delay in (("a", MANAGER_DELAY_A), ("b", MANAGER_DELAY_B)):
            crm.manager_delay = delay
            cpu_service, cpu_own, begin = service_cpu_seconds(service.pid), own_cpu_seconds(), time.monotonic()
            calls = route_calls(fs, routing_port, case, CALLS, WAVE_PERIOD[case], case)
            seconds = time.monotonic() - begin
            cpu_service = service_cpu_seconds(service.pid) - cpu_service
            cpu_own = own_cpu_seconds() - cpu_own
            measured[case] = calls
            case_problems = problems_of(calls, case, CALLS)
            problems += case_problems
            app = DECISION_APP[case]
            from_open, from_reply = decision_ms(calls, app, "open"), decision_ms(calls, app, "reply")
            print()
            if case == "a":
                figure("(a) CRM answers in %.0f ms, manager free and registered" % (delay * 1000),
                       "%d calls in %.1f s" % (len(calls), seconds))
            else:
                figure("(b) CRM never answers (it would after %.0f s)" % delay, "%d calls in %.1f s"
                       % (len(calls), seconds))
            figure("  decisions measured (%s)" % app, "%d of %d" % (len(from_open), CALLS))
            if from_open:
                figure("  decision p50 / p90 / p99 / max", stats(from_open))
                figure("    the same after the connect reply", stats(from_reply))
                if case == "a":
                    figure("  decision p99", "%.1f ms" % percentile(from_open, 99), "< %.0f ms (informational)"
                           % GOAL_A_P99_MS)
                    fallback = decision_ms(calls, "transfer", "open")
                    figure("  queued fallback transfer p50 / p90 / p99 / max", stats(fallback))
                else:
                    over = [ms - DEADLINE * 1000 for ms in from_open]
                    figure("  deadline", "%.1f ms" % (DEADLINE * 1000))
                    figure("  overshoot past the deadline p50 / p99 / max", "%.1f / %.1f / %.1f ms" % (
                        percentile(over, 50), percentile(over, 99), max(over)), "0: equals the deadline, not more")
                    figure("  overshoot min / mean", "%.1f / %.1f ms" % (min(over), sum(over) / len(over)))
            figure("  stages p50 / p99 / max (%d calls matched to their CRM lookup)" % len(calls), "")
            breakdown(calls, crm, app)
            figure("  service CPU", "%.0f%% of one core, %.2f ms per call"
                   % (100 * cpu_service / seconds, 1000 * cpu_service / max(1, len(calls))))
            figure("  bench process CPU (fakes)", "%.0f%% of one core" % (100 * cpu_own / seconds))
            figure("  calls with a wrong decision or left open", str(len(case_problems)))
            sys.stdout.flush()
        manager_requests = sum(1 for r in list(crm.requests) if r.path == MANAGER_PATH)
        print()
        figure("manager lookups received by the fake CRM", "%d (for %d calls)" % (manager_requests,
                                                                               WARMUP_CALLS + 2 * CALLS))
        print_problems(problems)
    finally:
        exit_code, stopped_in = shut_down(service, log, fs, crm)

    # The service's own figure (CallRouter: from the connect reply to the decision queued), whole ms.
    text = log_path.read_text(errors="replace")
    logged: dict[str, float] = {}
    for line in text.splitlines():
        found = _LOGGED.search(line)
        if found:
            logged[found.group(1)] = float(found.group(3))
    for case, calls in measured.items():
        own = [logged[c.uuid] for c in calls if c.uuid in logged]
        if own:
            figure("(%s) as the service logs it (whole ms) p50 / p99 / max" % case, "%.0f / %.0f / %.0f ms (%d calls)"
                   % (percentile(own, 50), percentile(own, 99), max(own), len(own)))
    warnings = [line for line in text.splitlines() if re.search(r" (WARNING|ERROR|CRITICAL) ", line)]
    kinds: dict[str, int] = {}
    for line in warnings:
        kind = re.sub(r"[0-9a-f]{8}-[0-9a-f-]{27}", "<uuid>", line.split(" ", 2)[-1])[:160]
        kinds[kind] = kinds.get(kind, 0) + 1
    figure("service exit after SIGTERM", "code %s in %.2f s" % (exit_code, stopped_in), "0, clean")
    figure("service log WARNING/ERROR lines", "%d (the %d `CRM too slow` warnings of (b) are expected)"
           % (len(warnings), len(measured.get("b", []))))
    for kind, count in sorted(kinds.items(), key=lambda item: -item[1])[:5]:
        print("    %5d x %s" % (count, kind))
    clean = exit_code == 0 and not problems and set(measured) == {"a", "b"}
    if clean:
        shutil.rmtree(work, ignore_errors=True)
    else:
        print("  service log kept in %s" % log_path)
    for case, calls in measured.items():
        values = decision_ms(calls, DECISION_APP[case], "open")
        if not values:
            result("routing (%s) FAILED: no decision measured" % case)
        elif case == "a":
            result("routing (a) CRM in %.0f ms -> bridge: p50 %.1f ms, p99 %.1f ms, max %.1f ms over %d calls"
                   % (MANAGER_DELAY_A * 1000, percentile(values, 50), percentile(values, 99), max(values), len(values)))
        else:
            result("routing (b) CRM silent -> fallback: p50 %.1f ms, p99 %.1f ms, max %.1f ms over %d calls; "
                   "deadline %.0f ms, overshoot p99 %.1f ms" % (percentile(values, 50), percentile(values, 99),
                                                                max(values), len(values), DEADLINE * 1000,
                                                                percentile(values, 99) - DEADLINE * 1000))
    result("routing checks: %s; service exit %s" % ("every call decided as expected and closed" if not problems
                                                     else "FAILED (%d problems)" % len(problems), exit_code))
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
