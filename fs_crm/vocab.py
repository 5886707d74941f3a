"""Protocol vocabulary in one place: ESL event and header names, hangup causes, retailCRM enums.

The ESL subscription list and the call mapping both read from here, so they cannot drift apart.
"""

# --- ESL events we subscribe to -------------------------------------------------------------
CHANNEL_CREATE = "CHANNEL_CREATE"
CHANNEL_PROGRESS = "CHANNEL_PROGRESS"
CHANNEL_PROGRESS_MEDIA = "CHANNEL_PROGRESS_MEDIA"
CHANNEL_ANSWER = "CHANNEL_ANSWER"
CHANNEL_BRIDGE = "CHANNEL_BRIDGE"
CHANNEL_UNBRIDGE = "CHANNEL_UNBRIDGE"
CHANNEL_HANGUP = "CHANNEL_HANGUP"
CHANNEL_HANGUP_COMPLETE = "CHANNEL_HANGUP_COMPLETE"
CHANNEL_DESTROY = "CHANNEL_DESTROY"
RECORD_START = "RECORD_START"
RECORD_STOP = "RECORD_STOP"
BACKGROUND_JOB = "BACKGROUND_JOB"
SOFIA_REGISTER = "sofia::register"
SOFIA_UNREGISTER = "sofia::unregister"
SOFIA_EXPIRE = "sofia::expire"

# Only what the call tracker reads: FreeSWITCH kills a listener that falls 500 events behind, and
# every event we do not need costs parsing. Features that need more (recordings, click-to-call
# jobs, registrations) add their events here.
TRACKED_EVENTS = (
    CHANNEL_CREATE, CHANNEL_PROGRESS, CHANNEL_PROGRESS_MEDIA, CHANNEL_ANSWER, CHANNEL_BRIDGE,
    CHANNEL_UNBRIDGE, CHANNEL_HANGUP, CHANNEL_HANGUP_COMPLETE, CHANNEL_DESTROY, RECORD_STOP,
)
SUBSCRIBED_EVENTS = TRACKED_EVENTS
SUBSCRIBED_CUSTOM: tuple[str, ...] = ()
# CUSTOM subclasses of optional features, added to the subscription only when an account uses them
# (status_from_pbx): statuses set with conf/freeswitch/dnd.xml's feature codes (the dialplan's
# `event` application), and mod_callcenter's events (agent-status-change among many others).
FS_CRM_STATUS = "fs_crm::status"
CALLCENTER_INFO = "callcenter::info"


def subscribe_command(custom: tuple[str, ...] = SUBSCRIBED_CUSTOM) -> str:
    command = "event plain %s" % " ".join(SUBSCRIBED_EVENTS)
    return command + (" CUSTOM %s" % " ".join(custom) if custom else "")


# --- ESL content types ------------------------------------------------------------------------
AUTH_REQUEST = "auth/request"
COMMAND_REPLY = "command/reply"
API_RESPONSE = "api/response"
EVENT_PLAIN = "text/event-plain"
EVENT_JSON = "text/event-json"
DISCONNECT_NOTICE = "text/disconnect-notice"
RUDE_REJECTION = "text/rude-rejection"
LOG_DATA = "log/data"

# --- Event headers and channel variables the mapping reads --------------------------------------
H_EVENT_NAME = "Event-Name"
H_EVENT_SUBCLASS = "Event-Subclass"
H_EVENT_TIMESTAMP = "Event-Date-Timestamp"  # microseconds since the epoch
H_EVENT_SEQUENCE = "Event-Sequence"
H_UNIQUE_ID = "Unique-ID"
H_CALL_UUID = "Channel-Call-UUID"
H_CHANNEL_NAME = "Channel-Name"
H_CALL_DIRECTION = "Call-Direction"
H_ANSWER_STATE = "Answer-State"
H_HANGUP_CAUSE = "Hangup-Cause"
H_OTHER_LEG_UUID = "Other-Leg-Unique-ID"
H_OTHER_TYPE = "Other-Type"
H_BRIDGE_A = "Bridge-A-Unique-ID"
H_BRIDGE_B = "Bridge-B-Unique-ID"
H_CALLER_NUMBER = "Caller-Caller-ID-Number"
H_CALLER_NAME = "Caller-Caller-ID-Name"
H_DESTINATION = "Caller-Destination-Number"
H_CREATED_TIME = "Caller-Channel-Created-Time"  # microseconds, 0 when not reached
H_ANSWERED_TIME = "Caller-Channel-Answered-Time"
H_BRIDGED_TIME = "Caller-Channel-Bridged-Time"
H_HANGUP_TIME = "Caller-Channel-Hangup-Time"
H_RECORD_FILE_PATH = "Record-File-Path"
H_RECORD_COMPLETION_CAUSE = "Record-Completion-Cause"
H_JOB_UUID = "Job-UUID"
# fs_crm::status, as conf/freeswitch/dnd.xml fires it: whose status, and which.
H_CRM_EXTENSION = "CRM-Extension"
H_CRM_DOMAIN = "CRM-Domain"
H_CRM_STATUS = "CRM-Status"
# callcenter::info (mod_callcenter.c cc_agent_update): CC-Action agent-status-change names the agent
# and its new status.
H_CC_ACTION = "CC-Action"
H_CC_AGENT = "CC-Agent"
H_CC_AGENT_STATUS = "CC-Agent-Status"
CC_AGENT_STATUS_CHANGE = "agent-status-change"

V_DIALED_USER = "variable_dialed_user"
V_DIALED_DOMAIN = "variable_dialed_domain"
V_USER_NAME = "variable_user_name"
V_DOMAIN_NAME = "variable_domain_name"
V_ORIGINATING_LEG = "variable_originating_leg_uuid"
V_IS_LOOPBACK = "variable_is_loopback"
V_BILLSEC = "variable_billsec"
V_DURATION = "variable_duration"
V_RECORD_DISCARDED = "variable_RECORD_DISCARDED"
# Our own markers, set by fs-crm's originate (click-to-call) and by the dialplan snippets in conf/.
V_CRM_DIRECTION = "variable_crm_direction"
V_CRM_PHONE = "variable_crm_phone"
V_CRM_EXTERNAL_PHONE = "variable_crm_external_phone"
# Set by the recording dialplan snippet (conf/freeswitch/) before record_session: the file, should
# its RECORD_STOP be missed (fs-crm restarting, a dropped socket).
V_CRM_RECORDING = "variable_crm_recording_path"
# Set by a dialplan on a leg that reaches a manager outside the directory (his mobile, through the
# carrier), e.g. bridge [crm_extension=100]sofia/gateway/carrier/79990000100: that leg is his phone.
V_CRM_EXTENSION = "variable_crm_extension"
# mod_callcenter's agent legs: the caller's leg (the queue member).
V_CC_MEMBER_SESSION = "variable_cc_member_session_uuid"
# mod_fifo's outbound members' legs: the caller it picked for them, from their CHANNEL_CREATE on
# (mod_fifo originates them itself, so they carry no originating_leg_uuid).
V_FIFO_BRIDGE_UUID = "variable_fifo_bridge_uuid"
# RECORD_STOP completion causes after which FreeSWITCH deleted (or never wrote) the file.
RECORD_DISCARD_CAUSES = frozenset({"empty-file", "input-too-short", "uri-failure"})

# --- retailCRM enums ----------------------------------------------------------------------------
EVENT_IN = "in"
EVENT_OUT = "out"
EVENT_HANGUP = "hangup"

# calls/upload `result` (note: "no answer")
RESULT_ANSWERED = "answered"
RESULT_BUSY = "busy"
RESULT_FAILED = "failed"
RESULT_NO_ANSWER = "no answer"
RESULT_NOT_ALLOWED = "not allowed"
RESULT_UNKNOWN = "unknown"
UPLOAD_RESULTS = (RESULT_ANSWERED, RESULT_BUSY, RESULT_FAILED, RESULT_NO_ANSWER, RESULT_NOT_ALLOWED,
                  RESULT_UNKNOWN)

# call/event `hangupStatus` (note: "no answered")
HANGUP_ANSWERED = "answered"
HANGUP_BUSY = "busy"
HANGUP_CANCEL = "cancel"
HANGUP_FAILED = "failed"
HANGUP_NO_ANSWER = "no answered"
HANGUP_STATUSES = (HANGUP_ANSWERED, HANGUP_BUSY, HANGUP_CANCEL, HANGUP_FAILED, HANGUP_NO_ANSWER)
EVENT_TYPES = (EVENT_IN, EVENT_OUT, EVENT_HANGUP)
UPLOAD_TYPES = (EVENT_IN, EVENT_OUT)
MAX_CALLS_PER_UPLOAD = 50

# --- Hangup cause -> upload result, for legs that were never answered -----------------------------
_CAUSES_BY_RESULT = {
    RESULT_BUSY: "USER_BUSY BUSY_EVERYWHERE NORMAL_CIRCUIT_CONGESTION SWITCH_CONGESTION",
    RESULT_NO_ANSWER: (
        "NO_ANSWER NO_USER_RESPONSE ORIGINATOR_CANCEL PROGRESS_TIMEOUT RECOVERY_ON_TIMER_EXPIRE "
        "LOSE_RACE NO_PICKUP SUBSCRIBER_ABSENT USER_NOT_REGISTERED NORMAL_CLEARING ALLOTTED_TIMEOUT "
        "PICKED_OFF"
    ),
    RESULT_NOT_ALLOWED: (
        "CALL_REJECTED DECLINE OUTGOING_CALL_BARRED INCOMING_CALL_BARRED FACILITY_REJECTED "
        "FACILITY_NOT_SUBSCRIBED BEARERCAPABILITY_NOTAUTH UNWANTED REJECT_ALL NO_IDENTITY "
        "BAD_IDENTITY_INFO INVALID_IDENTITY UNSUPPORTED_CERTIFICATE STALE_DATE USER_CHALLENGE"
    ),
    RESULT_FAILED: (
        "UNALLOCATED_NUMBER NO_ROUTE_TRANSIT_NET NO_ROUTE_DESTINATION NUMBER_CHANGED INVALID_NUMBER_FORMAT "
        "DOES_NOT_EXIST_ANYWHERE DESTINATION_OUT_OF_ORDER NETWORK_OUT_OF_ORDER NORMAL_TEMPORARY_FAILURE "
        "REQUESTED_CHAN_UNAVAIL SERVICE_UNAVAILABLE BEARERCAPABILITY_NOTAVAIL BEARERCAPABILITY_NOTIMPL "
        "CHAN_NOT_IMPLEMENTED FACILITY_NOT_IMPLEMENTED SERVICE_NOT_IMPLEMENTED INCOMPATIBLE_DESTINATION "
        "CHANNEL_UNACCEPTABLE EXCHANGE_ROUTING_ERROR INVALID_GATEWAY GATEWAY_DOWN INVALID_URL "
        "INVALID_PROFILE SRTP_READ_ERROR PROTOCOL_ERROR INTERWORKING INVALID_CALL_REFERENCE "
        "INVALID_MSG_UNSPECIFIED MANDATORY_IE_MISSING MESSAGE_TYPE_NONEXIST WRONG_MESSAGE IE_NONEXIST "
        "INVALID_IE_CONTENTS WRONG_CALL_STATE MANDATORY_IE_LENGTH_ERROR CRASH SYSTEM_SHUTDOWN "
        "MEDIA_TIMEOUT NOT_ACCEPTABLE"
    ),
}
UNANSWERED_RESULT_BY_CAUSE = {
    cause: result for result, causes in _CAUSES_BY_RESULT.items() for cause in causes.split()
}

# When several legs failed differently, the caller's experience decides: somebody could have
# answered (no answer) beats a busy line, which beats refusals and network failures.
RESULT_PRIORITY = (RESULT_NO_ANSWER, RESULT_BUSY, RESULT_NOT_ALLOWED, RESULT_FAILED, RESULT_UNKNOWN)

HANGUP_STATUS_BY_RESULT = {
    RESULT_ANSWERED: HANGUP_ANSWERED,
    RESULT_BUSY: HANGUP_BUSY,
    RESULT_NO_ANSWER: HANGUP_NO_ANSWER,
    RESULT_NOT_ALLOWED: HANGUP_FAILED,
    RESULT_FAILED: HANGUP_FAILED,
    RESULT_UNKNOWN: HANGUP_FAILED,
}
# A ringing phone that stopped because a colleague took the call (or picked it up) was not missed.
CAUSES_ANSWERED_ELSEWHERE = frozenset({"LOSE_RACE", "PICKED_OFF"})
