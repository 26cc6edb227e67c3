"""The embedded demo: a throwaway PostgreSQL, fake customers, and local TLS certificates."""
