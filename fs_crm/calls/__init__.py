"""Call tracking (pure): FreeSWITCH channel events in, CRM call cards and history records out."""

from fs_crm.calls.reconcile import LiveChannel, parse_live_channels
from fs_crm.calls.tracker import CallTracker

__all__ = ["CallTracker", "LiveChannel", "parse_live_channels"]
