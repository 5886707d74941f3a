"""The fake retailCRM's integration API group: the integration module fs-crm registers, and the
credentials (scopes, sites) of an API key."""

from __future__ import annotations

from fs_crm.sim.fake_crm.exchange import Received, _Answer, _error, _json
from fs_crm.sim.fake_crm.validation import _Validation

ALL_SCOPES = ("telephony_read", "telephony_write", "user_read", "user_write", "integration_read",
              "integration_write")


class _IntegrationRoutes(_Validation):
    """/api/v5/integration-modules/* and /api/credentials, mixed into FakeCrm (server.py), whose __init__
    holds the state they use."""

    def _module_edit(self, account: str, received: Received) -> _Answer:
        code = received.path.split("/")[4]
        module, problem = self._json_field(received, "integrationModule")
        if problem:
            return problem
        if not isinstance(module, dict):
            return _error(400, "Errors in the entity format", {"integrationModule": "This value should be an object."})
        errors = self._module_errors(code, module)
        if errors:
            return _error(400, "Errors in the entity format", errors)
        telephony = (module.get("integrations") or {}).get("telephony") or {}
        info: dict[str, list] = {}
        if self.known_user_ids is not None:
            unknown_users = [c["userId"] for c in telephony.get("additionalCodes") or []
                             if c["userId"] not in self.known_user_ids]
            if unknown_users:
                info["notExistUsersIds"] = unknown_users
        if self.known_sites is not None:
            unknown_sites = [p["siteCode"] for p in telephony.get("externalPhones") or []
                             if p["siteCode"] not in self.known_sites]
            if unknown_sites:
                info["notExistSiteCodes"] = unknown_sites
        with self._lock:
            created = (account, code) not in self.modules
            self.modules[(account, code)] = module
        # Like the real one: an empty JSON array, not an object, when there is nothing to report.
        return _json(201 if created else 200, {"success": True, "info": info or []})

    def _module_get(self, account: str, received: Received) -> _Answer:
        code = received.path.split("/")[4]
        with self._lock:
            module = self.modules.get((account, code))
        if module is None:
            return _error(404, "Not found")
        # The real answer adds read-only flags and does not give clientId back.
        shown = {k: v for k, v in module.items() if k != "clientId"}
        return _json(200, {"success": True, "integrationModule": {"freeze": False, "native": False, **shown}})

    def _credentials(self, account: str, received: Received) -> _Answer:
        return _json(200, {
            "success": True, "scopes": list(self.scopes),
            "credentials": ["/api/telephony/call/event", "/api/telephony/calls/upload", "/api/telephony/manager",
                            "/api/integration-modules/{code}", "/api/integration-modules/{code}/edit"],
            "siteAccess": "access_full", "sitesAvailable": sorted(self.known_sites or ()),
        })
