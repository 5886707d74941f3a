"""Call tracking (pure): FreeSWITCH channel events in, CRM call cards and history records out."""

from fs_crm.calls.cdr import CdrError, CdrLeg, group_calls, missing_legs, parse_cdr, records_from_cdrs
from fs_crm.calls.reconcile import LiveChannel, parse_live_channels
from fs_crm.calls.tracker import CallTracker

__all__ = ["CallTracker", "CdrError", "CdrLeg", "LiveChannel", "group_calls", "missing_legs", "parse_cdr",
           "parse_live_channels", "records_from_cdrs"]
