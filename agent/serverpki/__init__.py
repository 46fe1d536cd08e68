"""serverPKI: TLS certificates and DANE TLSA records for a fleet, driven by PostgreSQL."""

__version__ = "1.0.0.dev0"
