"""The fake retailCRM's telephony API group: call events (the cards), calls upload (the history) and
the manager lookup (who should answer a customer, and the customer's card)."""

from __future__ import annotations

from typing import Any, Iterable

import gevent

from fs_crm import vocab
from fs_crm.sim.fake_crm.exchange import Received, _Answer, _error, _json
from fs_crm.sim.fake_crm.validation import _Validation


def customer(customer_id: int, first_name: str, last_name: str = "", phones: Iterable[str] = (), **more: Any) -> dict:
    """A customer as the manager lookup gives it with details=1 (PHP SerializedCustomer):
    id, externalId, firstName, lastName, patronymic, email, phones [{number}]."""
    out: dict[str, Any] = {"id": customer_id, "firstName": first_name}
    if last_name:
        out["lastName"] = last_name
    out.update(more)  # externalId, patronymic, email
    out["phones"] = [{"number": p} for p in phones]
    return out


class _TelephonyRoutes(_Validation):
    """/api/v5/telephony/*, mixed into FakeCrm (server.py), whose __init__ holds the state they use."""

    def _call_event(self, account: str, received: Received) -> _Answer:
        event, problem = self._json_field(received, "event")
        if problem:
            return problem
        if not isinstance(event, dict):
            return _error(400, "Errors in the entity format", {"event": "This value should be an object."})
        errors = self._event_errors(event)
        if errors:
            return _error(400, "Errors in the entity format", errors)
        with self._lock:
            self.events.append(dict(event, account=account))
        payload: dict[str, Any] = {"success": True}
        if self.known_codes is not None:
            unknown = [c for c in event.get("codes") or [] if c not in self.known_codes]
            if unknown:
                payload["notExistCodes"] = unknown
        if self.known_user_ids is not None:
            unknown_users = [u for u in event.get("userIds") or [] if u not in self.known_user_ids]
            if unknown_users:
                payload["notExistUsers"] = unknown_users
        return _json(200, payload)

    def _calls_upload(self, account: str, received: Received) -> _Answer:
        calls, problem = self._json_field(received, "calls")
        if problem:
            return problem
        if not isinstance(calls, list) or not calls:
            return _error(400, "Errors in the entity format", {"calls": "This value should be a non-empty list."})
        if len(calls) > vocab.MAX_CALLS_PER_UPLOAD:
            return _error(400, "Errors in the entity format",
                          {"calls": "This collection should contain %d elements or less." % vocab.MAX_CALLS_PER_UPLOAD})
        errors: dict[str, str] = {}
        for i, call in enumerate(calls):
            self._call_errors(i, call, errors)
        if errors:
            return _error(400, "Errors in the entity format", errors)
        with self._lock:
            seen = self._accepted_ids.setdefault(account, set())
            duplicates = []
            processed = 0
            for call in calls:
                if call["externalId"] in self.silently_drop:
                    continue
                if call["externalId"] in seen:
                    duplicates.append(call["externalId"])
                else:
                    seen.add(call["externalId"])
                    self.calls.append(call)
                    processed += 1
            self.uploads.append(calls)
            if self.undercount_uploads and processed:
                self.undercount_uploads -= 1
                processed -= 1
        return _json(200, {"success": True, "processedCallsCount": processed, "duplicateCalls": duplicates})

    def _manager(self, account: str, received: Received) -> _Answer:
        phone = received.query.get("phone", "")
        if not phone:
            return _error(400, "Parameter 'phone' is missing")
        if self.manager_delay:
            gevent.sleep(self.manager_delay)
        payload: dict[str, Any] = {"success": True}
        manager = self.managers.get(phone)
        ignore_status = received.query.get("ignoreStatus") == "1"
        if manager is not None and (ignore_status or self.user_statuses.get(manager.get("id"), "free") == "free"):
            payload["manager"] = manager
        # details=1 adds the customer and links (PHP ManagerResponse; an unknown number gets only
        # the "new" links). UNVERIFIED: what details=0 leaves out; here, both.
        if received.query.get("details") == "1":
            links = {"newOrderLink": "/orders/add?phone=%s" % phone,
                     "newCustomerLink": "/customers/add?phone=%s" % phone}
            found = self.customers.get(phone)
            if found is not None:
                payload["customer"] = found
                links["customerLink"] = "/customers/%s" % found.get("id")
            payload["links"] = links
        return _json(200, payload)
