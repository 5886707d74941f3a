"""The fake FreeSWITCH's channel table: one row per live channel, in the columns `show channels` prints."""

from __future__ import annotations

from fs_crm.sim.fake_freeswitch.wire import PlainEvent
from fs_crm.vocab import H_EVENT_TIMESTAMP, H_UNIQUE_ID

# Columns of `show channels` (the `channels` table of switch_core_sqldb.c, in select * order).
CHANNEL_COLUMNS = (
    "uuid", "direction", "created", "created_epoch", "name", "state", "cid_name", "cid_num", "ip_addr",
    "dest", "application", "application_data", "dialplan", "context", "read_codec", "read_rate",
    "read_bit_rate", "write_codec", "write_rate", "write_bit_rate", "secure", "hostname", "presence_id",
    "presence_data", "accountcode", "callstate", "callee_name", "callee_num", "callee_direction",
    "call_uuid", "sent_callee_name", "sent_callee_num", "initial_cid_name", "initial_cid_num",
    "initial_ip_addr", "initial_dest", "initial_dialplan", "initial_context",
)
# Where the fake takes each column from. FreeSWITCH's SQL layer updates the row from specific events
# (CHANNEL_STATE, CALLSTATE, CODEC, EXECUTE, CALL_UPDATE...); the fake simply refreshes every column
# whose header is present in any event of that channel, which gives the same picture for our captures.
_COLUMN_SOURCES = {
    "name": "Channel-Name", "state": "Channel-State", "cid_name": "Caller-Caller-ID-Name",
    "cid_num": "Caller-Caller-ID-Number", "ip_addr": "Caller-Network-Addr",
    "dest": "Caller-Destination-Number", "application": "variable_current_application",
    "application_data": "variable_current_application_data", "dialplan": "Caller-Dialplan",
    "context": "Caller-Context", "read_codec": "Channel-Read-Codec-Name",
    "read_rate": "Channel-Read-Codec-Rate", "read_bit_rate": "Channel-Read-Codec-Bit-Rate",
    "write_codec": "Channel-Write-Codec-Name", "write_rate": "Channel-Write-Codec-Rate",
    "write_bit_rate": "Channel-Write-Codec-Bit-Rate", "hostname": "FreeSWITCH-Hostname",
    "presence_id": "variable_presence_id", "presence_data": "variable_presence_data",
    "accountcode": "variable_accountcode", "callstate": "Channel-Call-State",
    "callee_name": "Caller-Callee-ID-Name", "callee_num": "Caller-Callee-ID-Number",
    "call_uuid": "Channel-Call-UUID", "sent_callee_name": "variable_last_sent_callee_id_name",
    "sent_callee_num": "variable_last_sent_callee_id_number",
}
_INITIAL_COLUMNS = ("cid_name", "cid_num", "ip_addr", "dest", "dialplan", "context")


def _channel_row(event: PlainEvent) -> dict[str, str]:
    row = dict.fromkeys(CHANNEL_COLUMNS, "")
    timestamp = event.get(H_EVENT_TIMESTAMP) or "0"
    row.update(uuid=event.get(H_UNIQUE_ID) or "", direction=event.get("Call-Direction") or "",
               created=event.get("Event-Date-Local") or "",
               created_epoch=str(int(timestamp) // 1_000_000) if timestamp.isdigit() else "")
    _update_row(row, event)
    for column in _INITIAL_COLUMNS:
        row["initial_" + column] = row[column]
    return row


def _update_row(row: dict[str, str], event: PlainEvent) -> None:
    for column, header in _COLUMN_SOURCES.items():
        value = event.get(header)
        if value is not None:
            row[column] = value
