"""Masking personal data in results: values, columns and the session stage that rewrites rows."""
