"""Per-session statement handling, sans-IO: what a session knows and how it decides."""
