"""The CRM's callbacks: `/make-call` (click-to-call) and `/change-status` (user status), GET or POST."""

from __future__ import annotations

import logging
from typing import Callable, Mapping
from urllib.parse import parse_qsl

import bottle

from fs_crm.config import AccountConfig
from fs_crm.web.clicktocall import (
    BadRequest,
    CallbackError,
    ClickToCall,
    account_for_client_id,
    manager_extension,
)
from fs_crm.web.statuses import STATUSES, UserStatuses

logger = logging.getLogger(__name__)

MAX_QUERY = 4096
PARAMS = ("clientId", "code", "phone", "userId", "externalPhone", "status")
PHONE_PARAMS = ("phone", "externalPhone")


def request_params() -> dict[str, str]:
    """Query and form parameters, each given at most once.

    retailCRM writes `phone=+79121234567` without encoding the +, so in the query string a + is a
    plus, not a space. In a phone number only a leading + can be a plus: any later one is a
    form-encoded space (`phone=8+912+123+45+67`), which the phone rule accepts like %20.
    """
    raw = bottle.request.query_string
    if len(raw) > MAX_QUERY:
        raise BadRequest("request too long")
    pairs = parse_qsl(raw.replace("+", "%2B"), keep_blank_values=True, max_num_fields=20)
    pairs = [(name, value[:1] + value[1:].replace("+", " ") if name in PHONE_PARAMS else value)
             for name, value in pairs]
    if bottle.request.method == "POST":
        pairs += list(bottle.request.forms.decode().allitems())
    params: dict[str, str] = {}
    for name, value in pairs:
        if name not in PARAMS:
            continue
        if name in params:
            raise BadRequest("%s given twice" % name)
        if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
            raise BadRequest("%s holds control characters" % name)
        params[name] = value
    return params


def make_app(click_to_call: ClickToCall, statuses: UserStatuses, accounts: Mapping[str, AccountConfig]) -> bottle.Bottle:
    app = bottle.Bottle()

    def answer(handler: Callable[[dict[str, str]], str]) -> str:
        """One place maps domain errors to HTTP: short plain-text reasons, never a traceback."""
        bottle.response.content_type = "text/plain; charset=utf-8"
        bottle.response.set_header("Cache-Control", "no-store")
        try:
            return handler(request_params())
        except ValueError:  # e.g. too many fields, undecodable form
            bottle.response.status = 400
            return "bad request\n"
        except CallbackError as exc:
            bottle.response.status = exc.status
            return "%s\n" % exc

    def make_call(params: dict[str, str]) -> str:
        call_uuid = click_to_call.make_call(params)
        return "OK %s\n" % call_uuid

    def change_status(params: dict[str, str]) -> str:
        account = account_for_client_id(accounts, params.get("clientId"))
        status = params.get("status")
        if status not in STATUSES:
            logger.warning("account %s: unknown user status %r ignored", account.name, (status or "")[:20])
            raise BadRequest("status must be one of %s" % ", ".join(STATUSES))
        code = params.get("code")
        if not code and params.get("userId", "").isdigit():
            code = account.extension_of(int(params["userId"]))
        try:
            extension, user_id = manager_extension(account, code, params.get("userId"))
        except BadRequest:
            logger.warning("account %s: status %s for unknown user %s / extension %s ignored", account.name, status,
                           (params.get("userId") or "")[:20], (code or "")[:20])
            raise
        statuses.record(account.name, extension, user_id, status)
        return "OK\n"

    app.route("/make-call", ["GET", "POST"], lambda: answer(make_call))
    app.route("/change-status", ["GET", "POST"], lambda: answer(change_status))
    return app
