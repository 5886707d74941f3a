"""How the fake retailCRM checks the JSON entities fs-crm posts (call event, uploaded calls, task,
integration module): what the official clients' models accept, unknown fields recorded, not refused."""

from __future__ import annotations

import json
import re
from typing import Any

from fs_crm import vocab
from fs_crm.sim.fake_crm.exchange import Received, _Answer, _error

_DATE = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}")
_TASK_DATETIME = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}")  # the PHP client's DateTime<'Y-m-d H:i'>
# The PHP client's Tasks\Task fields a request may set (id, createdAt, complete... are the CRM's own).
_TASK_FIELDS = {"text", "commentary", "datetime", "performerId", "customer", "order", "phone", "phoneSite"}
_SOURCE_FIELDS = {"source", "medium", "campaign", "keyword", "content"}  # Model/Entity/Source
_EVENT_FIELDS = {"phone", "type", "codes", "userIds", "site", "hangupStatus", "externalPhone", "callExternalId",
                 "webAnalyticsData"}
_CALL_FIELDS = {"date", "type", "phone", "code", "userId", "result", "duration", "durationWaiting", "externalId",
                "recordUrl", "source", "externalPhone", "site", "clientId"}


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


class _Validation:
    """Entity checks, mixed into the route groups of FakeCrm (server.py), whose __init__ holds the
    state they use."""

    def _json_field(self, received: Received, name: str) -> tuple[Any, _Answer | None]:
        if name not in received.form or not received.form[name].strip():
            return None, _error(400, "Parameter '%s' is missing" % name)
        try:
            return json.loads(received.form[name]), None
        except ValueError:
            return None, _error(400, "Errors in the entity format", {name: "This value is not valid JSON."})

    def _event_errors(self, event: dict) -> dict[str, str]:
        errors: dict[str, str] = {}
        with self._lock:
            self.extra_fields.extend("event.%s" % name for name in sorted(set(event) - _EVENT_FIELDS))
        if not isinstance(event.get("phone"), str) or not event["phone"].strip():
            errors["phone"] = "This value should not be blank."
        if event.get("type") not in vocab.EVENT_TYPES:
            errors["type"] = "The value you selected is not a valid choice."
        codes, user_ids = event.get("codes"), event.get("userIds")
        if codes is not None and not (isinstance(codes, list) and all(isinstance(c, str) and c for c in codes)):
            errors["codes"] = "This value should be a list of strings."
        if user_ids is not None and not (isinstance(user_ids, list) and all(_is_int(u) for u in user_ids)):
            errors["userIds"] = "This value should be a list of integers."
        # Neither codes nor userIds is accepted: the official Python client's tests send
        # {"phone", "type"} alone and the PHP model makes both optional (nobody gets a pop-up then).
        # hangupStatus is accepted on any type: the v3 Python and .NET clients send it on in/out
        # events too; only its value is checked.
        if "hangupStatus" in event and event["hangupStatus"] not in vocab.HANGUP_STATUSES:
            errors["hangupStatus"] = "The value you selected is not a valid choice."
        for name in ("externalPhone", "callExternalId"):
            if name in event and not isinstance(event[name], str):
                errors[name] = "This value should be of type string."
        if "site" in event:
            self._check_site(event["site"], "site", errors)
        return errors

    def _check_site(self, site: Any, key: str, errors: dict[str, str]) -> None:
        if not isinstance(site, str) or not site:
            errors[key] = "This value should be of type string."
        elif self.known_sites is not None and site not in self.known_sites:
            errors[key] = "Site with code %s not found" % site

    def _call_errors(self, i: int, call: Any, errors: dict[str, str]) -> None:
        def bad(name: str, msg: str) -> None:
            errors["calls[%d][%s]" % (i, name)] = msg

        if not isinstance(call, dict):
            errors["calls[%d]" % i] = "This value should be an object."
            return
        with self._lock:
            self.extra_fields.extend("calls[%d].%s" % (i, name) for name in sorted(set(call) - _CALL_FIELDS))
        if not isinstance(call.get("date"), str) or not _DATE.fullmatch(call["date"]):
            bad("date", "This value is not a valid datetime (Y-m-d H:i:s).")
        if call.get("type") not in vocab.UPLOAD_TYPES:
            bad("type", "The value you selected is not a valid choice.")
        if not isinstance(call.get("phone"), str) or not call["phone"].strip():
            bad("phone", "This value should not be blank.")
        if call.get("result") not in vocab.UPLOAD_RESULTS:
            bad("result", "The value you selected is not a valid choice.")
        for name in ("duration", "durationWaiting"):
            if not _is_int(call.get(name)) or call[name] < 0:
                bad(name, "This value should be a non-negative integer.")
        if not isinstance(call.get("externalId"), str) or not call["externalId"]:
            bad("externalId", "This value should not be blank.")
        elif call["externalId"] in self.reject_external_ids:
            bad("phone", "This value is not valid (rejected on purpose by the fake).")
        for name in ("code", "externalPhone", "recordUrl"):
            if name in call and not isinstance(call[name], str):
                bad(name, "This value should be of type string.")
        if "userId" in call and not _is_int(call["userId"]):
            bad("userId", "This value should be of type integer.")
        if "site" in call:
            self._check_site(call["site"], "calls[%d][site]" % i, errors)
        if "source" in call:
            source = call["source"]
            if not isinstance(source, dict):
                bad("source", "This value should be an object.")
            else:
                for name, value in source.items():
                    if name not in _SOURCE_FIELDS:
                        with self._lock:
                            self.extra_fields.append("calls[%d].source.%s" % (i, name))
                    elif not isinstance(value, str):
                        errors["calls[%d][source][%s]" % (i, name)] = "This value should be of type string."

    def _task_errors(self, task: dict, form: dict[str, str]) -> dict[str, str]:
        with self._lock:
            self.extra_fields.extend("task.%s" % name for name in sorted(set(task) - _TASK_FIELDS))
        errors: dict[str, str] = {}
        if not isinstance(task.get("text"), str) or not task["text"].strip():
            errors["text"] = "This value should not be blank."
        # UNVERIFIED whether the real API defaults a missing performer; fs-crm always names one.
        performer = task.get("performerId")
        if not _is_int(performer):
            errors["performerId"] = "This value should be of type integer."
        elif self.known_user_ids is not None and performer not in self.known_user_ids:
            errors["performerId"] = "User with id %s not found" % performer
        if "datetime" in task and not (isinstance(task["datetime"], str) and _TASK_DATETIME.fullmatch(task["datetime"])):
            errors["datetime"] = "This value is not a valid datetime (Y-m-d H:i)."
        for name in ("commentary", "phone", "phoneSite"):
            if name in task and not isinstance(task[name], str):
                errors[name] = "This value should be of type string."
        if "customer" in task:
            customer = task["customer"]
            if not isinstance(customer, dict) or not (_is_int(customer.get("id"))
                                                      or isinstance(customer.get("externalId"), str)):
                errors["customer"] = "The customer needs an integer id or an externalId."
        if "site" in form:
            self._check_site(form["site"], "site", errors)
        return errors

    def _module_errors(self, code: str, module: dict) -> dict[str, str]:
        errors: dict[str, str] = {}
        if module.get("code") != code:
            errors["code"] = "The code in the body must match the code in the URL."
        for name in ("integrationCode", "name", "clientId", "baseUrl"):
            if not isinstance(module.get(name), str) or not module[name]:
                errors[name] = "This value should not be blank."
        for name in ("logo", "accountUrl"):
            if name in module and not isinstance(module[name], str):
                errors[name] = "This value should be of type string."
        if "active" in module and not isinstance(module["active"], bool):
            errors["active"] = "This value should be of type bool."
        integrations = module.get("integrations")
        if integrations is None:
            return errors
        telephony = integrations.get("telephony") if isinstance(integrations, dict) else None
        if not isinstance(telephony, dict):
            errors["integrations"] = "This value should hold a telephony object."
            return errors
        prefix = "integrations[telephony]"
        for name in ("allowEdit", "inputEventSupported", "outputEventSupported", "hangupEventSupported"):
            if name in telephony and not isinstance(telephony[name], bool):
                errors["%s[%s]" % (prefix, name)] = "This value should be of type bool."
        for name in ("makeCallUrl", "changeUserStatusUrl"):
            if name in telephony and not isinstance(telephony[name], str):
                errors["%s[%s]" % (prefix, name)] = "This value should be of type string."
        codes = telephony.get("additionalCodes", [])
        if not isinstance(codes, list):
            errors[prefix + "[additionalCodes]"] = "This value should be a list."
            codes = []
        for i, item in enumerate(codes):
            where = "%s[additionalCodes][%d]" % (prefix, i)
            if not isinstance(item, dict) or not _is_int(item.get("userId")):
                errors[where + "[userId]"] = "This value should be of type integer."
            if not isinstance(item, dict) or not isinstance(item.get("code"), str) or not item["code"]:
                errors[where + "[code]"] = "This value should be of type string."
        phones = telephony.get("externalPhones", [])
        if not isinstance(phones, list):
            errors[prefix + "[externalPhones]"] = "This value should be a list."
            phones = []
        for i, item in enumerate(phones):
            where = "%s[externalPhones][%d]" % (prefix, i)
            for name in ("siteCode", "externalPhone"):
                if not isinstance(item, dict) or not isinstance(item.get(name), str) or not item[name]:
                    errors["%s[%s]" % (where, name)] = "This value should be of type string."
        return errors
