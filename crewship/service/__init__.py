"""Floor 2: the use cases behind every front door (SSH, HTTP, client)."""
