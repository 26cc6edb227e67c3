"""Every SQLSTATE the gateway sends or reads, by PostgreSQL's condition name.

One table, so that a code never drifts between the place that raises it and the
place (a test, the README) that expects it. The names are PostgreSQL's own
(Appendix A of its manual), in upper case.
"""

from typing import Final

# Class 00: successful completion (a notice's code)
SUCCESSFUL_COMPLETION: Final = "00000"

# Class 08: connection exception
CONNECTION_EXCEPTION: Final = "08000"
SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: Final = "08001"
SQLSERVER_REJECTED_ESTABLISHMENT_OF_SQLCONNECTION: Final = "08004"
CONNECTION_FAILURE: Final = "08006"
PROTOCOL_VIOLATION: Final = "08P01"

# Class 0A: feature not supported
FEATURE_NOT_SUPPORTED: Final = "0A000"

# Class 25: invalid transaction state
IN_FAILED_SQL_TRANSACTION: Final = "25P02"

# Class 26 and 34: unknown prepared statement or portal
INVALID_SQL_STATEMENT_NAME: Final = "26000"
INVALID_CURSOR_NAME: Final = "34000"

# Class 28: invalid authorization specification
INVALID_AUTHORIZATION_SPECIFICATION: Final = "28000"
INVALID_PASSWORD: Final = "28P01"  # noqa: S105 - a SQLSTATE, not a password

# Class 3D: invalid catalog name
INVALID_CATALOG_NAME: Final = "3D000"

# Class 42: syntax error or access rule violation
SYNTAX_ERROR: Final = "42601"
INSUFFICIENT_PRIVILEGE: Final = "42501"
CHARACTER_NOT_IN_REPERTOIRE: Final = "22021"

# Class 53 and 54: insufficient resources, program limit exceeded
TOO_MANY_CONNECTIONS: Final = "53300"
PROGRAM_LIMIT_EXCEEDED: Final = "54000"
STATEMENT_TOO_COMPLEX: Final = "54001"
TOO_MANY_COLUMNS: Final = "54011"

# Class 57: operator intervention
QUERY_CANCELED: Final = "57014"
ADMIN_SHUTDOWN: Final = "57P01"

# Class P0: PL/pgSQL
RAISE_EXCEPTION: Final = "P0001"

# Class 58: system error
IO_ERROR: Final = "58030"

# Class XX: internal error
INTERNAL_ERROR: Final = "XX000"
