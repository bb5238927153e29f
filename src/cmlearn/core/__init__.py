"""cmlearn's core: torch only, importable alone (no registry, data readers or CLI needed)."""
