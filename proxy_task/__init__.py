"""The gateway's network adapter: sockets, TLS, sessions and backpressure.

The protocol logic lives in `custos/`; this package moves bytes between the
client and the database with asyncio (uvloop when installed).
"""
