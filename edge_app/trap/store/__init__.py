"""Media files, the SQLite catalogue and the durable outbox."""
