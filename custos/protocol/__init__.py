"""PostgreSQL v3 wire protocol: sans-IO framing, decoding and encoding.

Nothing here touches a socket: bytes go in, typed messages or spans come out,
so every parser can be fed its input whole, byte by byte, or with trailing data.
"""
