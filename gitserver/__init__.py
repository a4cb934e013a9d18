"""SSH front door: auth, git transport, ssh commands."""
