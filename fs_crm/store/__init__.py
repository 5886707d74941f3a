"""The state store: fs-crm's SQLite file (fs_crm.store.outbox) and the one OS thread that works on it."""
