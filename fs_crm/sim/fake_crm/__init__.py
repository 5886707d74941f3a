"""A fake retailCRM over real HTTP on 127.0.0.1 (tests and `make demo`): validates like the real one, records, fails on command.

Where it is unsure what the real API accepts it accepts (and records, e.g. `extra_fields`), so a
test can still assert what fs-crm sends; where the official clients document an answer shape
(errors as a list or a map, `info: []`, a 2xx with `"success": "false"`, HTML pages, 404 "API method
not found", 405), `answer_next` gives exactly that shape.

By job: `server` (FakeCrm: its state, the HTTP app, authentication), `exchange` (a recorded request
and the answer to it), `faults` (failure modes and canned answer shapes), `validation` (the checks
on the entities posted), and the routes per API group: `telephony`, `users` (with tasks),
`integration` (integration modules and credentials).
"""

from fs_crm.sim.fake_crm.exchange import Received
from fs_crm.sim.fake_crm.exchange import _json as _json  # tests build answers of their own with it
from fs_crm.sim.fake_crm.server import FakeCrm
from fs_crm.sim.fake_crm.telephony import customer
from fs_crm.sim.fake_crm.users import user

__all__ = ["FakeCrm", "Received", "customer", "user"]
