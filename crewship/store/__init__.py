"""Floor 0.5: the SQLite side (one file, WAL, numbered migrations); never imports a service."""
