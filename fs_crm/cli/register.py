"""`fs-crm register`: each account's telephony module in its CRM, created or updated (or shown with
--dry-run, compared with --check)."""

import argparse
import json
import sys

from fs_crm.cli.startup import configure


def cmd_register(args: argparse.Namespace) -> int:
    """Create or update each account's telephony module in its CRM (or show / compare it)."""
    from fs_crm.crm.client import CrmClient, CrmError
    from fs_crm.crm.registration import differences, info_problems, module_payload, public_url_warnings

    config = configure(args)
    accounts = config.accounts
    if args.account:
        accounts = tuple(a for a in config.accounts if a.name == args.account)
        if not accounts:
            print("fs-crm register: %s has no account %r (accounts: %s)" % (
                config.path, args.account, ", ".join(a.name for a in config.accounts)), file=sys.stderr)
            return 2
    for warning in public_url_warnings(config.http.public_url):
        print("WARNING: %s" % warning)
    ok = True
    for account in accounts:
        module = module_payload(account, config.http.public_url)
        where = "account %s (%s): module %s" % (account.name, account.crm_url, account.code)
        if args.dry_run:
            # The operator's own config, clientId included; the API key is not part of the module.
            print("%s: would send POST /api/v5/integration-modules/%s/edit with integrationModule =" % (
                where, account.code))
            print(json.dumps(module, indent=2, sort_keys=True, ensure_ascii=False))
            continue
        client = CrmClient(account, config.delivery)
        try:
            if args.check:
                actual = client.get_integration_module(account.code)
            else:
                info = client.edit_integration_module(module)
        except CrmError as exc:
            ok = False
            print("%s: FAILED: %s" % (where, exc))
            continue
        finally:
            client.close()
        if args.check:
            if actual is None:
                ok = False
                print("%s: NOT REGISTERED in the CRM (run fs-crm register)" % where)
                continue
            found = differences(module, actual)
            if found:
                ok = False
                print("%s: DIFFERS from the config (run fs-crm register):" % where)
                for line in found:
                    print("  - %s" % line)
            else:
                print("%s: matches the config" % where)
            continue
        tel = module["integrations"]["telephony"]
        print("%s: registered (active, %d extension(s), %d external number(s))" % (
            where, len(tel["additionalCodes"]), len(tel["externalPhones"])))
        for problem in info_problems(account.name, info):
            print("  WARNING: %s" % problem)
    return 0 if ok else 1
