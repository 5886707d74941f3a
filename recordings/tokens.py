"""Unguessable, self-verifying recording tokens (pure, apart from keeping the secret in a file).

A token is `<base64url(name)>.<base64url(HMAC-SHA256(secret, name))>` where `name` is the
recording's object name below the storage prefix: `<account>/<YYYY>/<MM>/<DD>/<call id>.<ext>`.
Verification needs only the secret, so URLs already given to the CRM keep working across
restarts and on any playback server that shares the secret, and a request can reach a storage key
only through a name this service signed. The name holds no phone number.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path

from fs_crm.filemodes import PRIVATE_FILE, open_new_file, private_dir

SECRET_FILE = "recording-url.key"
SECRET_ENV = "FS_CRM_RECORDING_URL_SECRET"
_MAC_BYTES = 20  # 160 bits: far beyond guessing, and keeps URLs short
_DOMAIN = b"fs-crm recording v1\0"  # separates these MACs from any other use of the same secret
MAX_TOKEN_LENGTH = 400
_TOKEN = re.compile(r"[A-Za-z0-9_-]{8,300}\.[A-Za-z0-9_-]{20,64}")
_NAME = re.compile(r"(?P<account>[A-Za-z0-9_-]{1,64})/\d{4}/\d{2}/\d{2}/(?P<call>[A-Za-z0-9-]{1,64})"
                   r"\.(?P<ext>mp3|wav|ogg|opus)")


class InvalidToken(Exception):
    """Malformed, or not signed with our secret."""


@dataclass(frozen=True)
class RecordingRef:
    account: str
    call_id: str
    name: str  # object name below the storage prefix

    @property
    def extension(self) -> str:
        return self.name.rsplit(".", 1)[1]


def recording_name(account: str, call_id: str, started: dt.date, extension: str) -> str:
    name = "%s/%04d/%02d/%02d/%s.%s" % (account, started.year, started.month, started.day, call_id,
                                        extension.lower().lstrip("."))
    if not _NAME.fullmatch(name):
        raise ValueError("cannot name a recording for account %r call %r (%s)" % (account, call_id, extension))
    return name


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class TokenCodec:
    def __init__(self, secret: bytes):
        if len(secret) < 16:
            raise ValueError("the recording URL secret must be at least 16 bytes")
        self._secret = secret

    def _mac(self, name: str) -> bytes:
        return hmac.new(self._secret, _DOMAIN + name.encode("utf-8"), hashlib.sha256).digest()[:_MAC_BYTES]

    def make(self, name: str) -> str:
        if not _NAME.fullmatch(name):
            raise ValueError("not a recording name: %r" % name)
        return "%s.%s" % (_b64(name.encode("utf-8")), _b64(self._mac(name)))

    def parse(self, token: str) -> RecordingRef:
        if len(token) > MAX_TOKEN_LENGTH or not _TOKEN.fullmatch(token):
            raise InvalidToken("malformed token")
        encoded_name, encoded_mac = token.split(".")
        try:
            name = _unb64(encoded_name).decode("utf-8")
            mac = _unb64(encoded_mac)
        except (binascii.Error, UnicodeDecodeError, ValueError):
            raise InvalidToken("malformed token") from None
        # Compare MACs before looking at the name, in constant time.
        if not hmac.compare_digest(mac, self._mac(name)):
            raise InvalidToken("token not signed by this service")
        match = _NAME.fullmatch(name)
        if match is None:
            raise InvalidToken("token names no recording")
        return RecordingRef(account=match["account"], call_id=match["call"], name=name)


def load_secret(configured: str | None, state_dir: Path, create: bool = True) -> bytes:
    """The configured secret (config or env), else one generated once and kept in the state dir,
    so URLs already sent to the CRM survive restarts. With create=False (a playback server of its
    own) a missing secret is an error: a new one would not verify any URL already sent."""
    value = os.environ.get(SECRET_ENV) or configured
    if value:
        return value.encode("utf-8")
    path = state_dir / SECRET_FILE
    try:
        return bytes.fromhex(path.read_text().strip())
    except FileNotFoundError:
        if not create:
            raise ValueError("no recording URL secret: set [storage] url_secret or %s to the value fs-crm run "
                             "uses (%s on its host)" % (SECRET_ENV, path)) from None
    except ValueError:
        raise ValueError("%s is not a hex secret; delete it only if no recording URL was ever sent" % path) from None
    private_dir(state_dir)
    secret = secrets.token_bytes(32)
    tmp = path.with_suffix(".tmp")
    # Exactly 0600 even under a umask of 0 or over a .tmp left by a crash with another mode.
    fd = open_new_file(tmp, PRIVATE_FILE)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret.hex())
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return secret


class RecordingLinks:
    """recordUrl values: `{public_url}/records/{token}`."""

    def __init__(self, public_url: str, codec: TokenCodec):
        self.base = public_url.rstrip("/") + "/records/"
        self.codec = codec

    def url(self, name: str) -> str:
        return self.base + self.codec.make(name)
