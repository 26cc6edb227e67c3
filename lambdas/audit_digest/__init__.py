"""The audit digest Lambda: signs each hour's digest of the audit archive with KMS."""
