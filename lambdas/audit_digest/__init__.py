"""The audit digest Lambda: signs each hour's digest of the archive with a KMS key."""
