"""fs-crm's own HTTP server: the CRM's callbacks (click-to-call, user statuses), /healthz, /metrics,
and the recordings' playback app mounted beside them."""
