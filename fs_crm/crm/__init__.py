"""The retailCRM boundary: the HTTP client (the only importer of requests), the telephony payloads,
the senders of call cards and call history, the integration module's registration, and the optional
features that write to the CRM (missed-call tasks, statuses set on the PBX)."""
