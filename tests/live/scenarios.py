"""What a person expects the CRM to show for each PBX situation: the cards, then the history record.

One table for both judges: the live tests (tests/live/) check it on what the fake CRM received from
fs-crm running against a real FreeSWITCH, and tests/test_live_captures.py checks it on the pure
tracker fed with the ESL stream that live run saved (fs_crm/sim/captures/live/<name>.esl.txt).
Durations are checked within a second: SIPp's pauses are not exact.
"""

from __future__ import annotations

from dataclasses import dataclass

CUSTOMER = "79121234567"
# How long the router's manager rings before the fallback (tests/live/pbx.py router_call_timeout).
SCENARIO_CALL_TIMEOUT = 6
# The CRM account of the test PBX (tests/live/pbx/): users 1-4 have extensions 100-400; calls fs-crm
# cannot route go to `reception` (400).
DOMAIN = "pbx.test"
EXTENSIONS = {"1": "100", "2": "200", "3": "300", "4": "400"}
ACCOUNT = {"domain": DOMAIN, "extensions": EXTENSIONS, "fallback": "reception", "context": "default"}


@dataclass(frozen=True)
class Expected:
    # (type, codes, hangupStatus): which phones got an `in` or `out` card and how each was closed.
    # Phones of a ring group may be named in one card or in several: FreeSWITCH does not promise
    # that every forked leg is created before the first one rings, so only the per-phone outcome
    # is compared (see card_outcome).
    cards: tuple[tuple[str, tuple[str, ...], str | None], ...]
    # fields of the one history record (None: no record at all, e.g. an internal call)
    history: dict | None
    talk: int | None = None
    waiting: int | None = None
    # The stream ends because FreeSWITCH died: the replay has the event socket break this many
    # seconds after the last event, then finds no channel left (as fs-crm does on reconnecting).
    connection_lost_after: float | None = None
    # Several customers' calls at once, each expected to look like this.
    calls: int = 1


IN, OUT, HANGUP = "in", "out", "hangup"

SCENARIOS: dict[str, Expected] = {
    "ringgroup_answered": Expected(
        cards=((IN, ("100", "200"), None), (HANGUP, ("100",), "cancel"), (HANGUP, ("200",), "answered")),
        history={"type": "in", "result": "answered", "code": "200", "userId": 2, "site": "shop1",
                 "externalPhone": "+74999999999", "phone": CUSTOMER},
        talk=3, waiting=2),
    "ringgroup_missed": Expected(
        cards=((IN, ("100", "200"), None), (HANGUP, ("100", "200"), "no answered")),
        history={"type": "in", "result": "no answer", "site": "shop1", "phone": CUSTOMER},
        talk=0, waiting=4),
    # The phone never rang, so no card; the call is still the CRM's, as busy.
    "single_busy": Expected(
        cards=(),
        history={"type": "in", "result": "busy", "code": "300", "userId": 3, "site": "shop2", "phone": CUSTOMER},
        talk=0),
    "outgoing_answered": Expected(
        cards=((OUT, ("100",), None), (HANGUP, ("100",), "answered")),
        history={"type": "out", "result": "answered", "code": "100", "userId": 1, "site": "shop1",
                 "externalPhone": "+74999999999", "phone": CUSTOMER},
        talk=3, waiting=2),
    "internal": Expected(cards=(), history=None),
    "trunk_prefix_caller": Expected(
        cards=((IN, ("300",), None), (HANGUP, ("300",), "answered")),
        history={"type": "in", "result": "answered", "code": "300", "site": "shop2", "phone": CUSTOMER},
        talk=2, waiting=1),
    # FreeSWITCH answers at once for a 1 s announcement, then 100 rings 1 s and answers; the customer
    # hangs up 4 s after FreeSWITCH answered. The announcement is not talking to anybody.
    "announcement_first": Expected(
        cards=((IN, ("100",), None), (HANGUP, ("100",), "answered")),
        history={"type": "in", "result": "answered", "code": "100", "phone": CUSTOMER},
        talk=2, waiting=2),
    # The queue answers the customer at once (hold music); 200 answers 1.5 s later; the customer
    # hangs up 4.5 s after the queue answered. Time in the queue is waiting time.
    "queue_ringall_answered": Expected(
        cards=((IN, ("100", "200"), None), (HANGUP, ("100",), "cancel"), (HANGUP, ("200",), "answered")),
        history={"type": "in", "result": "answered", "code": "200", "userId": 2, "phone": CUSTOMER},
        talk=3, waiting=2),
    # 300 rang for 3 s, then the customer left a 6 s message: missed, for 300.
    "voicemail_after_no_answer": Expected(
        cards=((IN, ("300",), None), (HANGUP, ("300",), "no answered")),
        history={"type": "in", "result": "no answer", "code": "300", "phone": CUSTOMER},
        talk=0),
    # The carrier leg to 100's mobile is 100's phone, not a second customer.
    "forward_to_mobile": Expected(
        cards=((IN, ("100",), None), (HANGUP, ("100",), "answered")),
        history={"type": "in", "result": "answered", "code": "100", "userId": 1, "phone": CUSTOMER},
        talk=3, waiting=2),
    # Follow-me: 100's desk phone rings 3 s (call_timeout), then his mobile rings 1 s and answers.
    # Both legs are 100's phones, each with its own ring: a card while the desk rings (closed as not
    # answered when follow-me moves on), another while the mobile rings; he answered the call.
    "follow_me_to_mobile": Expected(
        cards=((IN, ("100",), None), (HANGUP, ("100",), "no answered"), (IN, ("100",), None),
               (HANGUP, ("100",), "answered")),
        history={"type": "in", "result": "answered", "code": "100", "userId": 1, "phone": CUSTOMER},
        talk=3, waiting=4),
    # 300 answers after 1 s and talks 2 s, then the customer is transferred to 200, who rings 1 s
    # and talks 3 s: talk is both conversations, the call is 200's (the last one the customer
    # talked to), and each phone had its own card.
    "blind_transfer": Expected(
        cards=((IN, ("300",), None), (HANGUP, ("300",), "answered"), (IN, ("200",), None),
               (HANGUP, ("200",), "answered")),
        history={"type": "in", "result": "answered", "code": "200", "userId": 2, "site": "shop2", "phone": CUSTOMER},
        talk=5, waiting=2),
    # 200 answers after 1 s; 3 s into the conversation FreeSWITCH is killed (-9) and started again.
    # fs-crm reports the call once, answered by 200, with the talk it can vouch for (until the
    # event socket broke), closes 200's card, and uploads the recording FreeSWITCH left on disk.
    "freeswitch_killed_mid_call": Expected(
        cards=((IN, ("100", "200"), None), (HANGUP, ("100",), "cancel"), (HANGUP, ("200",), "answered")),
        history={"type": "in", "result": "answered", "code": "200", "userId": 2, "site": "shop1", "phone": CUSTOMER},
        talk=3, waiting=1, connection_lost_after=3.0),
    # 300 rings 1 s, then 400 picks the call up (*8) and talks 3 s: 400's call; 300's card closes
    # as taken elsewhere, and 400's screen shows the customer once he has the call.
    "pickup": Expected(
        cards=((IN, ("300",), None), (HANGUP, ("300",), "cancel"), (IN, ("400",), None),
               (HANGUP, ("400",), "answered")),
        history={"type": "in", "result": "answered", "code": "400", "userId": 4, "site": "shop2", "phone": CUSTOMER},
        talk=3, waiting=1),
    # 300 answers after 1 s and talks 2 s, parks the customer (2 s on hold in the lot), and 400
    # retrieves the call and talks 3 s: both conversations are talk, parking is waiting. 400's
    # screen shows the customer's card once he has the call.
    "park_and_retrieve": Expected(
        cards=((IN, ("300",), None), (HANGUP, ("300",), "answered"), (IN, ("400",), None),
               (HANGUP, ("400",), "answered")),
        history={"type": "in", "result": "answered", "code": "400", "userId": 4, "site": "shop2", "phone": CUSTOMER},
        talk=5, waiting=3),
    # The queue answers at once; 100 and 200 ring; the customer leaves after 3 s: missed.
    "queue_abandoned": Expected(
        cards=((IN, ("100", "200"), None), (HANGUP, ("100", "200"), "no answered")),
        history={"type": "in", "result": "no answer", "phone": CUSTOMER},
        talk=0, waiting=3),
    # One agent at a time: 100 rings 4 s (his leg_timeout), then 300 rings 1 s and answers.
    "queue_topdown_second_agent": Expected(
        cards=((IN, ("100",), None), (HANGUP, ("100",), "no answered"), (IN, ("300",), None),
               (HANGUP, ("300",), "answered")),
        history={"type": "in", "result": "answered", "code": "300", "userId": 3, "phone": CUSTOMER},
        talk=4, waiting=5),
    # mod_fifo's queue (74996666661): fifo answers the customer at once (hold music) and, within
    # a second (its outbound thread polls once a second), rings both members, 200 and 300, itself;
    # 300 answers after 1.5 s and the customer hangs up 5 s after fifo answered. Time in the
    # queue is waiting time; the call is 300's and 200's card closes as taken elsewhere.
    "queue_fifo_answered": Expected(
        cards=((IN, ("200", "300"), None), (HANGUP, ("200",), "cancel"), (HANGUP, ("300",), "answered")),
        history={"type": "in", "result": "answered", "code": "300", "userId": 3, "phone": CUSTOMER},
        talk=3, waiting=2),
    # The same queue; 200 and 300 ring; the customer leaves after 4 s: missed.
    "queue_fifo_abandoned": Expected(
        cards=((IN, ("200", "300"), None), (HANGUP, ("200", "300"), "no answered")),
        history={"type": "in", "result": "no answer", "phone": CUSTOMER},
        talk=0, waiting=4),
    # 300 answers after 1 s and talks 2 s; meanwhile a consultation call reaches 200 (1 s ringing,
    # 2 s talking); then the customer is put through to 200 until 8 s after the answer (about 3 s).
    # Talk is every second the customer spoke to a manager (about 7 s: 300 stays on the line during
    # the consultation), ringing is waiting; the call is 200's.
    "attended_transfer": Expected(
        cards=((IN, ("300",), None), (HANGUP, ("300",), "answered"), (IN, ("200",), None),
               (HANGUP, ("200",), "answered")),
        history={"type": "in", "result": "answered", "code": "200", "userId": 2, "site": "shop2", "phone": CUSTOMER},
        talk=7, waiting=1),
    # Click-to-call: 100 answers after 1 s, the customer 1 s later and hangs up after 3 s. One
    # outgoing call of 100's, never an incoming card for his own phone ringing.
    "click_to_call": Expected(
        cards=((OUT, ("100",), None), (HANGUP, ("100",), "answered")),
        history={"type": "out", "result": "answered", "code": "100", "userId": 1, "phone": CUSTOMER},
        talk=3),
    # As blind_transfer, but 300's phone transfers by itself (SIP REFER, Refer-To: 200): 300 answers
    # after 1 s and talks 2 s, 200 rings 1 s and talks 3 s. Same cards and record.
    "refer_blind_transfer": Expected(
        cards=((IN, ("300",), None), (HANGUP, ("300",), "answered"), (IN, ("200",), None),
               (HANGUP, ("200",), "answered")),
        history={"type": "in", "result": "answered", "code": "200", "userId": 2, "site": "shop2", "phone": CUSTOMER},
        talk=5, waiting=2),
    # 300 answers after 1 s, talks 2 s, puts the customer on hold (re-INVITE a=sendonly; FreeSWITCH
    # plays hold music to him inside the bridge) for 2 s, takes him back and talks until 7 s after
    # the answer. The customer never left his manager: hold is part of the conversation, not waiting.
    "hold_and_resume": Expected(
        cards=((IN, ("300",), None), (HANGUP, ("300",), "answered")),
        history={"type": "in", "result": "answered", "code": "300", "userId": 3, "site": "shop2", "phone": CUSTOMER},
        talk=7, waiting=1),
    # FreeSWITCH's att_xfer from the phone (74998888881: *4 then 200, SIP INFO DTMF): 300 answers
    # after 1 s and talks 1.5 s, dials the code; 200 rings 1 s and talks 2 s with 300 while the
    # customer holds; 300 hangs up and the customer is put through to 200 until 8 s after the answer.
    # As attended_transfer: every second after the answer is with a manager; the call is 200's.
    # (74998888881 is not one of the account's external_phones, so there is no site.)
    "att_xfer_feature_code": Expected(
        cards=((IN, ("300",), None), (HANGUP, ("300",), "answered"), (IN, ("200",), None),
               (HANGUP, ("200",), "answered")),
        history={"type": "in", "result": "answered", "code": "200", "userId": 2, "phone": CUSTOMER},
        talk=8, waiting=1),
    # Routed by fs-crm (74997777777): the CRM names 100, who rings his whole call_timeout and
    # misses it; the fallback, reception (400), rings 1 s and talks 2 s. 100 missed a call that
    # timed out; the call is 400's.
    "routed_manager_no_answer": Expected(
        cards=((IN, ("100",), None), (HANGUP, ("100",), "no answered"), (IN, ("400",), None),
               (HANGUP, ("400",), "answered")),
        history={"type": "in", "result": "answered", "code": "400", "userId": 4, "phone": CUSTOMER},
        talk=2, waiting=SCENARIO_CALL_TIMEOUT + 1),
    # Routed to 100, who answers after 1 s and ends the call 2 s later; the fallback never runs.
    "routed_manager_answers": Expected(
        cards=((IN, ("100",), None), (HANGUP, ("100",), "answered")),
        history={"type": "in", "result": "answered", "code": "100", "userId": 1, "phone": CUSTOMER},
        talk=2, waiting=1),
    # The CRM answers the manager lookup with 500, or later than manager_timeout (1.5 s): the
    # call goes to reception at once, or after the deadline.
    "routed_crm_failed": Expected(
        cards=((IN, ("400",), None), (HANGUP, ("400",), "answered")),
        history={"type": "in", "result": "answered", "code": "400", "userId": 4, "phone": CUSTOMER},
        talk=2, waiting=1),
    "routed_crm_slow": Expected(
        cards=((IN, ("400",), None), (HANGUP, ("400",), "answered")),
        history={"type": "in", "result": "answered", "code": "400", "userId": 4, "phone": CUSTOMER},
        talk=2, waiting=3),
    # Two customers ring shop1's group at once (100 and 200 ring for both); both give up: two
    # calls, each with its own cards for both phones.
    "ringgroup_two_customers": Expected(
        cards=((IN, ("100", "200"), None), (HANGUP, ("100", "200"), "no answered")),
        history={"type": "in", "result": "no answer", "site": "shop1"}, calls=2),
}


def card_outcome(cards) -> dict[str, list]:
    """Per phone, in order: the card types it got, with the hangup status (e.g. ["in", "hangup:answered"])."""
    outcome: dict[str, list] = {}
    for kind, codes, status in cards:
        for code in codes:
            outcome.setdefault(code, []).append(kind if kind != "hangup" else "hangup:%s" % status)
    return outcome


def check_history(record: dict, expected: Expected) -> list[str]:
    """What differs between one history record and the expectation (empty when it matches)."""
    problems = ["%s: %r, expected %r" % (key, record.get(key), value)
                for key, value in (expected.history or {}).items() if record.get(key) != value]
    for key, value in (("duration", expected.talk), ("durationWaiting", expected.waiting)):
        if value is not None and abs(int(record.get(key, -99)) - value) > 1:
            problems.append("%s: %r, expected %s ± 1" % (key, record.get(key), value))
    return problems
