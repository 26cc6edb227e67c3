"""Protocol constants: message type bytes and special request codes."""

PROTOCOL_3_0 = 196608
SSL_REQUEST_CODE = 80877103
GSSENC_REQUEST_CODE = 80877104
CANCEL_REQUEST_CODE = 80877102

# PostgreSQL refuses startup packets larger than this (MAX_STARTUP_PACKET_LENGTH).
MAX_STARTUP_PACKET_BYTES = 10_000

# Frontend (client to server) message types after startup.
BIND = ord("B")
CLOSE = ord("C")
COPY_DATA = ord("d")
COPY_DONE = ord("c")
COPY_FAIL = ord("f")
DESCRIBE = ord("D")
EXECUTE = ord("E")
FLUSH = ord("H")
FUNCTION_CALL = ord("F")
PARSE = ord("P")
PASSWORD = ord("p")
QUERY = ord("Q")
SYNC = ord("S")
TERMINATE = ord("X")

FRONTEND_TYPES = frozenset(
    {
        BIND,
        CLOSE,
        COPY_DATA,
        COPY_DONE,
        COPY_FAIL,
        DESCRIBE,
        EXECUTE,
        FLUSH,
        FUNCTION_CALL,
        PARSE,
        PASSWORD,
        QUERY,
        SYNC,
        TERMINATE,
    }
)

# Backend (server to client) message types the gateway reads or writes.
AUTHENTICATION = ord("R")
BACKEND_KEY_DATA = ord("K")
DATA_ROW = ord("D")
ERROR_RESPONSE = ord("E")
NEGOTIATE_PROTOCOL_VERSION = ord("v")
NOTICE_RESPONSE = ord("N")
PARAMETER_STATUS = ord("S")
READY_FOR_QUERY = ord("Z")

AUTH_OK = 0
AUTH_CLEARTEXT_PASSWORD = 3
