"""Errors raised while finding or authenticating to the upstream database.

Messages speak to the operator who configured the gateway: what went wrong and what to
change. They never carry a password, a token or the text of a DSN.
"""


class UpstreamError(Exception):
    """Base for every upstream failure."""


class UpstreamConfigurationError(UpstreamError):
    """The gateway's upstream configuration is wrong; retrying will not help until it is fixed."""


class UpstreamUnavailable(UpstreamError):
    """A service the credential depends on could not be reached; retrying later may help."""


class UpstreamAuthenticationError(UpstreamError):
    """The authentication exchange with the upstream database cannot go on."""
