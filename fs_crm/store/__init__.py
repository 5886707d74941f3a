"""The state store: fs-crm's SQLite file (fs_crm.outbox) and the one OS thread that works on it."""
