"""The fake retailCRM's users and tasks API groups: the users list, a user's status (and the status
callback the CRM makes after it), and tasks created for a manager."""

from __future__ import annotations

from typing import Any
from urllib.error import HTTPError, URLError
from urllib.parse import urlencode
from urllib.request import urlopen

import gevent

from fs_crm.sim.fake_crm.exchange import Received, _Answer, _error, _json
from fs_crm.sim.fake_crm.validation import _Validation

_USER_STATUSES = ("free", "busy", "dinner", "break")  # Enum/Users/UserStatus
# The page sizes GET /api/v5/users takes (the PHP client's PaginationLimit).
_PAGE_LIMITS = (20, 50, 100, 250)


def user(user_id: int, first_name: str = "", last_name: str = "", active: bool = True, **more: Any) -> dict:
    """A CRM user as GET /api/v5/users lists it (PHP Model/Entity/Users/User and UsersTest's fixture):
    id, createdAt, active, email, firstName, lastName, status, online, isAdmin, isManager, groups."""
    out: dict[str, Any] = {"id": user_id, "createdAt": "2024-01-15 09:00:00", "active": active,
                           "email": "user%d@shop.test" % user_id, "firstName": first_name or "User%d" % user_id}
    if last_name:
        out["lastName"] = last_name
    out.update({"status": "free", "online": active, "isAdmin": False, "isManager": True,
                "groups": [{"id": 25, "name": "Managers", "code": "manager"}]})
    out.update(more)
    return out


class _UserRoutes(_Validation):
    """/api/v5/users* and /api/v5/tasks/*, mixed into FakeCrm (server.py), whose __init__ holds the
    state they use."""

    def _task_create(self, account: str, received: Received) -> _Answer:
        task, problem = self._json_field(received, "task")
        if problem:
            return problem
        if not isinstance(task, dict):
            return _error(400, "Errors in the entity format", {"task": "This value should be an object."})
        errors = self._task_errors(task, received.form)
        if errors:
            return _error(400, "Errors in the entity format", errors)
        with self._lock:
            task_id = len(self.tasks) + 1
            self.tasks.append(dict(task, account=account, id=task_id, site=received.form.get("site")))
        return _json(200, {"success": True, "id": task_id})

    def _user_status(self, account: str, received: Received) -> _Answer:
        raw_id = received.path.split("/")[4]
        if not raw_id.isdigit() or (self.known_user_ids is not None and int(raw_id) not in self.known_user_ids):
            return _error(404, "Not found")
        status = received.form.get("status")
        if not status:
            return _error(400, "Parameter 'status' is missing")
        if status not in _USER_STATUSES:
            return _error(400, "Errors in the entity format", {"status": "The value you selected is not a valid choice."})
        user_id = int(raw_id)
        with self._lock:
            self.user_statuses[user_id] = status
            self.status_changes.append({"account": account, "userId": user_id, "status": status})
        callback = self.status_callbacks.get(account)
        if callback is not None:
            gevent.spawn(self._call_back_status, callback, user_id, status)
        return _json(200, {"success": True})

    def _users(self, account: str, received: Received) -> _Answer:
        """The users list, paginated like every retailCRM list: limit (20 by default), page from 1."""
        errors: dict[str, str] = {}
        raw_limit, raw_page = received.query.get("limit", "20"), received.query.get("page", "1")
        if not raw_limit.isdigit() or int(raw_limit) not in _PAGE_LIMITS:
            errors["limit"] = "The value you selected is not a valid choice."
        if not raw_page.isdigit() or int(raw_page) < 1:
            errors["page"] = "This value should be greater than or equal to 1."
        if errors:
            return _error(400, "Errors in the input parameters", errors)
        limit, page = int(raw_limit), int(raw_page)
        with self._lock:
            listed = [self.users[uid] for uid in sorted(self.users)]
        pages = max(1, -(-len(listed) // limit))
        return _json(200, {"success": True,
                           "pagination": {"limit": limit, "totalCount": len(listed), "currentPage": page,
                                          "totalPageCount": pages},
                           "users": listed[(page - 1) * limit:page * limit]})

    def _call_back_status(self, callback: tuple[str, str, dict[int, str]], user_id: int, status: str) -> None:
        url, client_id, codes = callback
        params = {"clientId": client_id, "userId": str(user_id), "code": codes.get(user_id, ""), "status": status}
        # fs-crm's only requests importer is its CRM client: the fake calls back with the stdlib.
        try:
            with urlopen("%s?%s" % (url, urlencode(params)), timeout=5) as answer:
                outcome: Any = answer.status
        except HTTPError as exc:
            outcome = exc.code
        except (URLError, OSError) as exc:
            outcome = repr(exc)
        with self._lock:
            self.status_callbacks_made.append(dict(params, outcome=outcome))
