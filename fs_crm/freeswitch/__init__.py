"""The FreeSWITCH boundary: the ESL session core and its three roles (the event listener, the command
client, the outbound-socket sessions and the router behind them), ESL parsing, caller-ID names made
safe for FreeSWITCH, and the CDRs mod_json_cdr posts."""
