"""What one calls/upload answer means for the calls it carried (pure): which are surely in the CRM,
which the answer does not account for, whether a refusal is about the account, and the CRM's words."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fs_crm.crm.answers import CrmError, CrmRejected

if TYPE_CHECKING:
    from fs_crm.crm.client import UploadResult
    from fs_crm.store.outbox import OutboxItem


def is_account_problem(exc: CrmRejected) -> bool:
    """True when the refusal is about the key, account or endpoint, so setting calls aside would be wrong.

    fs_crm.crm.answers decides (it knows the CRM's vocabulary): 401/403/404/405, redirects, HTML pages,
    a 2xx refusal that names no call, and retailCRM's account messages.
    """
    return exc.account_problem


def reason_of(exc: CrmError) -> str:
    """The CRM's own words, for last_error and logs (the account is on the item already)."""
    text = exc.error_msg or type(exc).__name__
    if exc.status is not None:
        text = "HTTP %s: %s" % (exc.status, text)
    if exc.errors:
        # A map ({"calls[0][code]": "..."}) or a list (["...", "..."]): both as JSON.
        text += " " + json.dumps(exc.errors, ensure_ascii=False, default=str)
    return text


@dataclass(frozen=True)
class Tally:
    """An accepted upload's answer, call by call."""

    delivered: list[OutboxItem]  # surely in the CRM now
    unconfirmed: list[OutboxItem]  # fewer counted than sent, and not named as duplicates
    duplicates: frozenset[str]  # externalIds of this upload the CRM already had
    strays: list[str]  # duplicates the CRM named that were not in this upload
    counted: bool  # whether the answer said how many calls it processed
    shortfall: str  # how the count disagrees with the upload; "" when it agrees or was not given


def tally(items: Sequence[OutboxItem], result: UploadResult) -> Tally:
    """Does the answer account for every call? Duplicates are what the CRM already had (it
    deduplicates by externalId), so processedCallsCount + duplicates should be the upload."""
    sent = {item.external_id for item in items}
    duplicates = set(result.duplicates) & sent
    strays = [i for i in result.duplicates if i not in sent]
    unconfirmed: list[OutboxItem] = []
    shortfall = ""
    # A success without a count (processed None): the only statement the CRM made is that it worked.
    if result.processed is not None and result.processed + len(duplicates) != len(items):
        shortfall = ("the CRM accounted for %d of %d calls (processedCallsCount %d, %d duplicates)"
                     % (result.processed + len(duplicates), len(items), result.processed, len(duplicates)))
        if result.processed + len(duplicates) < len(items):
            # Fewer than sent: a call may be lost, and the count does not say which. Only the
            # duplicates are surely there; the others are sent again, which is safe because
            # the CRM deduplicates by externalId (UNVERIFIED, but the documented reason for
            # duplicateCalls): what it did store comes back as a duplicate, so the resend
            # names exactly the missing calls. If it still does not account for them, they
            # are set aside (kept, visible, retried with retry_failed) rather than dropped,
            # or left pending forever at the head of the account's queue.
            unconfirmed = [item for item in items if item.external_id not in duplicates]
    unsure = {item.external_id for item in unconfirmed}
    delivered = [item for item in items if item.external_id not in unsure]
    return Tally(delivered, unconfirmed, frozenset(duplicates), strays, result.processed is not None, shortfall)
