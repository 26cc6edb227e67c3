"""The audit trail: PII-free, hash-chained evidence of every session and statement."""
