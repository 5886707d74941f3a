"""`fs-crm backfill`: calls fs-crm never saw over ESL, rebuilt from the CDRs mod_json_cdr spooled, into
the outbox."""

import argparse
import sys
import time
from pathlib import Path

from fs_crm.cli.startup import configure


def cmd_backfill(args: argparse.Namespace) -> int:
    """Queue the history of calls fs-crm never saw over ESL, rebuilt from the CDRs mod_json_cdr
    spooled while fs-crm was away (its err-log-dir). Calls the outbox already has, pending or
    delivered, are skipped, so running it twice queues nothing new."""
    from fs_crm.calls.cdr import CdrError, group_calls, missing_legs, parse_cdr, records_from_cdrs
    from fs_crm.store.history_queue import new_calls, recording_links
    from fs_crm.store.outbox import FILE_NAME, Outbox, OutboxError

    config = configure(args)
    directory = Path(args.dir)
    try:
        paths = sorted(path for path in directory.iterdir() if path.name.endswith(".cdr.json"))
    except NotADirectoryError:
        print("fs-crm backfill: %s is not a directory" % directory, file=sys.stderr)
        return 2
    except OSError as exc:
        print("fs-crm backfill: cannot read directory %s: %s" % (directory, exc.strerror or exc), file=sys.stderr)
        return 2
    legs, bad = [], 0
    for path in paths:
        try:
            legs.append(parse_cdr(path.read_bytes()))  # the line names the file
        except OSError as exc:
            bad += 1
            print("bad file %s: cannot read it: %s; skipped" % (path, exc.strerror or exc))
        except CdrError as exc:
            bad += 1
            print("bad file %s: %s; skipped" % (path, exc))
    records, incomplete, no_call = [], 0, 0
    for group in group_calls(legs):
        missing = missing_legs(group)
        if missing and not args.partial:
            incomplete += 1
            print("incomplete call %s: no CDR of leg(s) %s, which its legs name; not queued (run again once "
                  "they are in %s, or with --partial)" % (group[0].uuid, ", ".join(sorted(missing)), directory))
            continue
        found = records_from_cdrs(group, config.accounts)
        no_call += not found
        records.extend(found)
    added: list[bool] = []
    if records:
        config.state.dir.mkdir(parents=True, exist_ok=True)
        try:
            calls = new_calls(records, recording_links(config), time.time() + config.storage.max_wait)
            outbox = Outbox(config.state.dir / FILE_NAME)
            try:
                added = outbox.add_calls(calls)
            finally:
                outbox.close()
        except (OutboxError, OSError, ValueError) as exc:  # the outbox, or the recording URL secret
            print("fs-crm backfill: %s; nothing queued" % exc, file=sys.stderr)
            return 1
    for record, new in zip(records, added, strict=True):
        print("%s %s account %s: %s %s %s, talk %ss, waited %ss, %s" % (
            "queued" if new else "skipped (already queued or delivered)", record.external_id, record.account,
            record.type, record.result, record.code or "-", record.duration, record.duration_waiting, record.date))
    queued = sum(added)
    print("%d CDR file(s): %d call(s) queued, %d already known, %d incomplete, %d bad file(s); "
          "%d group(s) of legs made no CRM call (internal, or no account matches)" % (
              len(paths), queued, len(added) - queued, incomplete, bad, no_call))
    return 1 if bad or incomplete else 0
