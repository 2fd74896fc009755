"""speech vendor adapters, one module per vendor (found by providers.registry)."""
