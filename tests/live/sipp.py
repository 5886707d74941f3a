"""SIPp as the managers' phones and the telephone carrier of the test PBX.

Each party of a call is one SIPp process running one scenario from tests/live/sipp/ once (`-m 1`):
the scenario files hold the SIP messages, and the `{{name}}` holes are filled here with the ports,
users and timings of the test. A phone registers once with the Contact of its own port; every
later call to it is answered by whichever scenario the test starts on that port.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from pbx import DOMAIN, PHONE_PASSWORDS, LivePbx, free_media_port, free_port

SCENARIOS = Path(__file__).parent / "sipp"
SIPP = "sipp"


def _render(name: str, values: dict) -> str:
    text = (SCENARIOS / name).read_text()
    for key, value in values.items():
        text = text.replace("{{%s}}" % key, str(value))
    if "{{" in text:
        start = text.index("{{")
        raise ValueError("scenario %s: unfilled %s" % (name, text[start:text.index("}}", start) + 2]))
    return text


def dtmf(keys: str, user: str, gap_ms: int = 200, first_cseq: int = 100) -> str:
    """The SIPp steps of an answering phone pressing `keys` (SIP INFO, one a key), for a hole such as
    keys_then_hang_up.part's {{keys}}; CSeqs from first_cseq on (that part's BYE is 200)."""
    return "".join(_render("dtmf_info.part", {"key": key, "cseq": first_cseq + i, "user": user, "gap_ms": gap_ms})
                   for i, key in enumerate(keys))


class SippFailed(AssertionError):
    pass


@dataclass
class Party:
    """One running SIPp process: a phone, the customer, or the carrier."""

    name: str
    process: subprocess.Popen
    workdir: Path

    def wait(self, timeout: float = 60.0) -> None:
        try:
            rc = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise SippFailed("%s: SIPp still running after %ss\n%s" % (self.name, timeout, self.logs())) from None
        if rc != 0:
            raise SippFailed("%s: SIPp exited with %s\n%s" % (self.name, rc, self.logs()))

    @property
    def done(self) -> bool:
        return self.process.poll() is not None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def received_requests(self, method: str) -> list[str]:
        """The full text of each `method` request this party received, from SIPp's -trace_msg log:
        a dashed line with the time, "UDP message received [N] bytes :", a blank line, the message."""
        path = self.workdir / ("%s-messages.log" % self.name)
        text = path.read_bytes().decode("utf-8", errors="replace") if path.exists() else ""
        entries = re.split(r"(?m)^-{20,} \d{4}-\d\d-\d\d [0-9:.]+\n", text)
        return [entry.split("\n\n", 1)[1] for entry in entries
                if entry.startswith(("UDP message received", "TCP message received")) and "\n\n" in entry
                and entry.split("\n\n", 1)[1].startswith(method + " ")]

    def logs(self) -> str:
        parts = []
        for path in sorted(self.workdir.glob("%s*" % self.name)):
            if path.suffix in (".log", ".out") and path.stat().st_size:
                parts.append("--- %s\n%s" % (path.name, path.read_text(errors="replace")[-6000:]))
        return "\n".join(parts)


class Sipp:
    def __init__(self, pbx: LivePbx, workdir: Path):
        self.pbx = pbx
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.phone_ports = {ext: free_port() for ext in PHONE_PASSWORDS}
        self.parties: list[Party] = []
        self._count = 0

    # --- running one party ---------------------------------------------------------------------
    def _start(self, name: str, scenario: str, port: int, remote: str | None = None, calls: int = 1) -> Party:
        self._count += 1
        name = "%02d-%s" % (self._count, name)
        path = self.workdir / ("%s.xml" % name)
        path.write_text(scenario)
        command = [SIPP] + ([remote] if remote else []) + [
            "-sf", str(path), "-i", "127.0.0.1", "-p", str(port), "-m", str(calls), "-nostdin",
            "-timeout", "90s", "-timeout_error", "-max_recv_loops", "1000",
            "-mp", str(free_media_port()),  # the media ports SIPp binds and announces; no media flows
            "-trace_err", "-error_file", str(self.workdir / ("%s-errors.log" % name)),
            "-trace_msg", "-message_file", str(self.workdir / ("%s-messages.log" % name)),
        ]
        out = open(self.workdir / ("%s.out" % name), "wb")
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   cwd=self.workdir)
        party = Party(name, process, self.workdir)
        self.parties.append(party)
        return party

    def stop_all(self) -> None:
        for party in self.parties:
            party.stop()
        self.parties.clear()

    # --- phones -------------------------------------------------------------------------------
    def register(self, extension: str, expires: int = 3600) -> None:
        scenario = _render("register.xml", {"domain": DOMAIN, "user": extension,
                                            "password": PHONE_PASSWORDS[extension], "expires": expires})
        self._start("register-%s" % extension, scenario, self.phone_ports[extension],
                    "127.0.0.1:%d" % self.pbx.ports.local_sip).wait(timeout=15)

    def register_all(self) -> None:
        for extension in self.phone_ports:
            self.register(extension)

    # --- called parties: a phone, or the customer behind the carrier ---------------------------------
    def _called(self, who: str, port: int, behaviour: str, user: str, ring_ms: int = 1000,
                talk_ms: int | None = None, bye_timeout_ms: int = 60000, calls: int = 1,
                after_answer: tuple[str, dict] | None = None) -> Party:
        if behaviour == "answer":
            # after_answer: (part, values) of tests/live/sipp/ the phone plays once it answered, in
            # place of hanging up or waiting for BYE (in-dialog requests of its own: REFER, re-INVITE).
            hangs_up = talk_ms is not None or after_answer is not None
            if after_answer is not None:
                part, values = after_answer
                ending = _render(part, dict(values, user=user, bye_timeout_ms=bye_timeout_ms))
            elif hangs_up:
                ending = _render("hang_up_uas.part", {"talk_ms": talk_ms, "user": user})
            else:
                ending = _render("wait_bye.part", {"bye_timeout_ms": bye_timeout_ms})
            # SIPp refuses variables that are set and never used: capture only for our own BYE.
            capture = _render("capture_dialog.part", {}) if hangs_up else ""
            scenario = _render("answer.xml", {"ring_ms": ring_ms, "user": user, "ending": ending,
                                              "capture": capture})
        else:
            scenario = _render("%s.xml" % behaviour, {"user": user})
        return self._start("%s-%s" % (who, behaviour), scenario, port, calls=calls)

    def phone(self, extension: str, behaviour: str, **timing) -> Party:
        """behaviour: answer (after ring_ms; hangs up after talk_ms, or waits for BYE, or plays
        after_answer), ring, busy. calls: how many calls this phone takes (at the same time or one
        after the other)."""
        return self._called("phone%s" % extension, self.phone_ports[extension], behaviour, extension, **timing)

    def carrier(self, behaviour: str, **timing) -> Party:
        """The far end of a call out through gateway `carrier` (the customer, or a mobile)."""
        return self._called("carrier", self.pbx.ports.carrier_sip, behaviour, "customer", **timing)

    # --- callers --------------------------------------------------------------------------------
    def _call(self, who: str, then: str, values: dict, remote: str, port: int, auth: bool,
              wait_ms: int = 5000, talk_ms: int | None = None, status: int = 486,
              bye_timeout_ms: int = 60000, headers: str = "", ringback: int = 183) -> Party:
        if then == "give_up":
            after = _render("give_up.part", dict(values, wait_ms=wait_ms, ringback=ringback))
        elif then == "refused":
            after = _render("busy_reply.part", dict(values, status=status))
        else:
            ending = (_render("hang_up.part", {"talk_ms": talk_ms, "user": values["from"]}) if talk_ms is not None
                      else _render("wait_bye.part", {"bye_timeout_ms": bye_timeout_ms}))
            after = _render("answered.part", dict(values, ending=ending))
        auth_part = _render("call_auth.part", dict(values, headers=headers)) if auth else ""
        scenario = _render("call.xml", dict(values, auth=auth_part, after_invite=after, headers=headers))
        return self._start(who, scenario, port, remote)

    def customer_calls(self, company_number: str, customer: str = "79121234567", then: str = "talk",
                       **options) -> Party:
        """The customer calls a company number through the carrier. then: talk (hangs up after
        talk_ms, or waits for BYE without talk_ms), give_up (CANCEL after wait_ms), refused."""
        values = {"to": company_number, "domain": "127.0.0.1:%d" % self.pbx.ports.external_sip,
                  "from": customer, "from_name": customer, "from_domain": "carrier.test", "password": ""}
        return self._call("customer-calls-%s" % company_number, then, values,
                          "127.0.0.1:%d" % self.pbx.ports.external_sip, free_port(), False, **options)

    def phone_calls(self, extension: str, number: str, then: str = "talk", **options) -> Party:
        """A manager's phone dials a number (a colleague's extension, or a customer's)."""
        values = {"to": number, "domain": DOMAIN, "from": extension, "from_name": extension,
                  "from_domain": DOMAIN, "password": PHONE_PASSWORDS[extension]}
        return self._call("phone%s-calls-%s" % (extension, number), then, values,
                          "127.0.0.1:%d" % self.pbx.ports.local_sip, free_port(), True, **options)
