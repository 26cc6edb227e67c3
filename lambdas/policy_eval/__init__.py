"""The policy evaluation Lambda: decides one query for the proxy under the policy in S3."""
