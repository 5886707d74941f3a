"""The configuration's model: the frozen dataclasses fs-crm runs on, with their code defaults.

Nothing here reads a file: fs_crm.config.loader fills them in from the operator's TOML and the environment.
"""

from __future__ import annotations

import functools
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path

from fs_crm.phones import canonical_phone, digits_of


@dataclass(frozen=True)
class FreeswitchConfig:
    host: str = "127.0.0.1"
    port: int = 8021
    password: str = field(default="ClueCon", repr=False)
    # Every command we send waits at most this long for its reply; a silent FreeSWITCH must
    # never freeze the listener.
    command_timeout: float = 5.0
    connect_timeout: float = 5.0
    reconnect_min_delay: float = 0.5
    reconnect_max_delay: float = 30.0


@dataclass(frozen=True)
class HttpConfig:
    listen_host: str = "127.0.0.1"
    listen_port: int = 8090
    public_url: str = "http://127.0.0.1:8090"


@dataclass(frozen=True)
class StateConfig:
    dir: Path = Path("/var/lib/fs-crm")
    # Calls in progress tracked at most: a flood of calls that never end (or lost hangup events)
    # must not grow memory without bound. Beyond it the longest-silent calls are finished as
    # orphans, with a warning, and reported with what is known of them.
    max_calls_in_progress: int = 50_000


@dataclass(frozen=True)
class DeliveryConfig:
    # A call card older than this helps nobody: it is dropped with a log line instead of sent.
    card_max_age: float = 30.0
    connect_timeout: float = 3.05
    event_read_timeout: float = 5.0
    upload_read_timeout: float = 20.0
    # retailCRM's documented budgets: about 40 requests/s on /telephony routes, 10/s elsewhere.
    telephony_rps: float = 40.0
    general_rps: float = 10.0
    retry_min_delay: float = 1.0
    retry_max_delay: float = 60.0


@dataclass(frozen=True)
class StorageConfig:
    # None: no storage configured; recordings are ignored and no call waits for one.
    backend: str | None = None  # "s3" | "local"
    bucket: str | None = None
    region: str | None = None
    endpoint_url: str | None = None  # S3-compatible stores (MinIO, Ceph, Yandex Object Storage...)
    prefix: str = ""
    directory: Path | None = None  # backend "local"
    # Signs recording URLs; generated once into the state dir when not given. Playback servers
    # run on their own (horizontal scaling) need the same value.
    url_secret: str | None = field(default=None, repr=False)
    # How long a call's history waits for its recording to be stored before going without it.
    max_wait: float = 600.0
    # Remove FreeSWITCH's file once the store has confirmed the object.
    delete_local: bool = True


# retailCRM's source object (PHP client Model/Entity/Source): what calls[][source] may hold.
SOURCE_FIELDS = ("source", "medium", "campaign", "keyword", "content")
# Placeholders a missed-call task's text may use.
TASK_TEXT_FIELDS = ("phone", "date", "external_phone", "site")


@dataclass(frozen=True)
class MissedCallTasks:
    """An account's missed incoming calls become CRM tasks (`[accounts.missed_call_tasks]`)."""

    text: str = "Missed call from {phone}: call back"
    # CRM user id for a missed call with no responsible manager and no single manager it rang
    # (a ring group nobody answered); None: no task for such calls.
    performer: int | None = None
    # The task is due this many minutes after the call; 0: no due time.
    due_in_minutes: int = 0


@dataclass(frozen=True)
class AccountConfig:
    name: str
    crm_url: str
    api_key: str = field(repr=False)
    client_id: str = field(repr=False)
    code: str
    domain: str
    timezone: str
    # (CRM user id, extension) pairs, in file order.
    extensions: tuple[tuple[int, str], ...] = ()
    # (store code, company number) pairs, in file order.
    external_phones: tuple[tuple[str, str], ...] = ()
    # ISO 3166 alpha-2 region of numbers written without a country code ("89121234567" in RU).
    country: str = "RU"
    # --- CRM to PBX ---
    # The account's dialplan context: click-to-call dials the customer there when no outbound
    # route is given (as if the manager had dialled the number), and routing falls back there.
    context: str = "default"
    # Click-to-call: a dial string with {number} (e.g. "sofia/gateway/carrier/{number}") to reach the
    # customer directly, instead of the dialplan. Values are checked against a whitelist.
    outbound_route: str | None = None
    # Seconds the manager's phone rings on click-to-call before giving up.
    answer_timeout: int = 30
    # Routing: dialplan destination (ring group, queue or extension) in `context` for incoming calls
    # whose responsible manager is unknown, away, unregistered, or when the CRM is slow or failing.
    fallback: str | None = None
    # Routing: ring the responsible manager whenever his phone is free (registered and on no call),
    # whatever his status in the CRM (the lookup asks with ignoreStatus=1, fs-crm's own record of
    # his status is not consulted either). Off: only a manager the CRM calls free, not away.
    ignore_status: bool = False
    # Where CRM user statuses go on the PBX: "none" (fs-crm's own routing only), "callcenter"
    # (mod_callcenter agent status), "hash" or "db" (a do-not-disturb flag the dialplan can read).
    status_push: str = "none"
    # mod_callcenter agent name for an extension.
    callcenter_agent: str = "{extension}@{domain}"
    # --- optional features, off by default ---
    # Call tracking: (company number as in external_phones, ((source field, value), ...)) pairs;
    # the history of calls on that number carries them as calls[][source].
    external_phone_sources: tuple[tuple[str, tuple[tuple[str, str], ...]], ...] = ()
    # Status changes made on the PBX (conf/freeswitch/dnd.xml's feature codes, mod_callcenter agent
    # status with status_push = "callcenter") become the CRM user's status.
    status_from_pbx: bool = False
    # None: missed calls make no tasks.
    missed_call_tasks: MissedCallTasks | None = None

    def source_of(self, external_phone: str | None) -> dict[str, str] | None:
        """The call-tracking source of a company number as external_phones writes it, if any."""
        for number, fields in self.external_phone_sources:
            if number == external_phone:
                return dict(fields)
        return None

    @property
    def default_external_phone(self) -> str | None:
        return self.external_phones[0][1] if self.external_phones else None

    def extension_of(self, user_id: int) -> str | None:
        for uid, ext in self.extensions:
            if uid == user_id:
                return ext
        return None

    @property
    def zone(self) -> zoneinfo.ZoneInfo:
        return zoneinfo.ZoneInfo(self.timezone)

    def user_id_of(self, extension: str) -> int | None:
        for user_id, ext in self.extensions:
            if ext == extension:
                return user_id
        return None

    def has_extension(self, extension: str) -> bool:
        return any(ext == extension for _, ext in self.extensions)

    def canonical_phone(self, number: str | None) -> str:
        """The number as fs-crm sends it to the CRM: E.164 digits without + (fs_crm.phones)."""
        return canonical_phone(number, self.country)

    def site_of(self, number: str) -> tuple[str, str] | None:
        """(store code, configured number) for a company number written in any common form."""
        wanted = digits_of(number)
        if not wanted:
            return None
        canonical = self.canonical_phone(number)
        for site, configured, have, have_canonical in self._company_numbers:
            if (have == wanted or (len(have) >= 10 and len(wanted) >= 10 and have[-10:] == wanted[-10:])
                    or have_canonical == canonical):
                return site, configured
        return None

    @functools.cached_property
    def _company_numbers(self) -> tuple[tuple[str, str, str, str], ...]:
        # site_of runs for every call card: the configured numbers are taken apart once.
        return tuple((site, configured, digits_of(configured), self.canonical_phone(configured))
                     for site, configured in self.external_phones)


@dataclass(frozen=True)
class RoutingConfig:
    # The outbound-socket app FreeSWITCH connects to (`socket 127.0.0.1:8084 async full`).
    listen_host: str = "127.0.0.1"
    listen_port: int = 8084
    enabled: bool = True
    # Hard deadline for asking the CRM who the caller's responsible manager is.
    manager_timeout: float = 1.5


@dataclass(frozen=True)
class CdrConfig:
    """`POST /cdr` from mod_json_cdr (conf/freeswitch/json_cdr.conf.xml): on only with a password."""

    user: str = "freeswitch"
    password: str | None = field(default=None, repr=False)
    # Addresses the posts may come from; default: [freeswitch] host.
    allow: tuple[str, ...] = ()
    # mod_json_cdr's err-log-dir, when FreeSWITCH runs on this host: what it spooled while fs-crm
    # was away is taken from there (and the files removed) without a manual `fs-crm backfill`.
    spool_dir: Path | None = None

    @property
    def enabled(self) -> bool:
        return bool(self.password)


@dataclass(frozen=True)
class HealthConfig:
    # /healthz answers 503 once the oldest call waiting for the CRM has waited this long (seconds).
    max_pending_age: float = 600.0


@dataclass(frozen=True)
class Config:
    path: str
    freeswitch: FreeswitchConfig
    http: HttpConfig
    state: StateConfig
    delivery: DeliveryConfig
    accounts: tuple[AccountConfig, ...]
    log_level: str = "INFO"
    log_format: str = "text"  # "text" | "json": one record per line either way
    storage: StorageConfig = StorageConfig()
    routing: RoutingConfig = RoutingConfig()
    health: HealthConfig = HealthConfig()
    cdr: CdrConfig = CdrConfig()

    def account(self, name: str) -> AccountConfig:
        for acc in self.accounts:
            if acc.name == name:
                return acc
        raise KeyError(name)
