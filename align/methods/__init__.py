"""align's methods, one package each, registered by name (see docs/architecture.md)."""
