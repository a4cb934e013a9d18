"""Runtime: supervisor policy over backends, and the in-crew runner."""
