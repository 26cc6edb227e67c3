"""How the server will read a statement's bytes: its encoding and its string syntax.

PostgreSQL converts query text from the client's encoding to its own before it lexes
it, and `standard_conforming_strings` decides whether a backslash in '...' escapes the
quote after it. The gateway must read a statement exactly as the server will, or a
second statement can hide inside what the gateway takes for a string.

Two facts keep this cheap and exact:

* Text that is pure ASCII and holds no backslash reads the same under every client
  encoding (all are ASCII supersets) and either string syntax. Almost every statement
  is such text, and needs nothing more than `bytes.isascii()` and a `find`.
* Other text is decoded with the client encoding's codec. Where the session's settings
  make that unsafe, the statement is refused with a message saying why:
  - encodings whose multibyte characters can carry an ASCII byte (a backslash, a
    quote, a digit) as their second byte: SJIS, BIG5, GBK, UHC, GB18030, JOHAB;
  - `standard_conforming_strings = off`, for text with a backslash;
  - encodings without a codec here.

The settings are the server's own, from its ParameterStatus reports (SET, set_config,
the startup packet's options or a function: the report comes whatever changed it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from custos.protocol import sqlstates
from custos.protocol.backend import parameter_status

# PostgreSQL encoding names (as ParameterStatus reports them) to Python codecs, for the
# encodings whose multibyte characters use only bytes >= 0x80.
_CODECS = {
    "UTF8": "utf-8",
    "LATIN1": "latin-1",
    "LATIN2": "iso8859-2",
    "LATIN3": "iso8859-3",
    "LATIN4": "iso8859-4",
    "LATIN5": "iso8859-9",
    "LATIN6": "iso8859-10",
    "LATIN7": "iso8859-13",
    "LATIN8": "iso8859-14",
    "LATIN9": "iso8859-15",
    "LATIN10": "iso8859-16",
    "WIN1250": "cp1250",
    "WIN1251": "cp1251",
    "WIN1252": "cp1252",
    "WIN1253": "cp1253",
    "WIN1254": "cp1254",
    "WIN1255": "cp1255",
    "WIN1256": "cp1256",
    "WIN1257": "cp1257",
    "WIN1258": "cp1258",
    "WIN866": "cp866",
    "WIN874": "cp874",
    "KOI8R": "koi8-r",
    "KOI8U": "koi8-u",
    "ISO_8859_5": "iso8859-5",
    "ISO_8859_6": "iso8859-6",
    "ISO_8859_7": "iso8859-7",
    "ISO_8859_8": "iso8859-8",
    "EUC_JP": "euc-jp",
    "EUC_KR": "euc-kr",
    "EUC_CN": "gb2312",
}

UNSAFE_ENCODINGS = frozenset({"SJIS", "SHIFT_JIS_2004", "BIG5", "GBK", "UHC", "GB18030", "JOHAB"})
"""Client encodings in which a multibyte character's second byte can be an ASCII byte."""


class LexicalRefusal(Exception):
    """The statement cannot be read safely under the session's settings; says why."""

    def __init__(self, message: str, sqlstate: str = sqlstates.FEATURE_NOT_SUPPORTED) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = sqlstate


@dataclass(frozen=True, slots=True)
class LexicalSettings:
    client_encoding: str = "UTF8"
    server_encoding: str = "UTF8"
    standard_conforming_strings: bool = True

    def updated(self, name: str, value: str) -> LexicalSettings:
        """These settings after a ParameterStatus report; themselves if it is not one of them."""
        if name == "client_encoding":
            return LexicalSettings(
                value.upper(), self.server_encoding, self.standard_conforming_strings
            )
        if name == "server_encoding":
            return LexicalSettings(
                self.client_encoding, value.upper(), self.standard_conforming_strings
            )
        if name == "standard_conforming_strings":
            return LexicalSettings(self.client_encoding, self.server_encoding, value == "on")
        return self

    def decode(self, text: bytes) -> str:
        """The statement text as the server will lex it; LexicalRefusal when that is unsafe."""
        if not self.standard_conforming_strings and text.find(b"\\") >= 0:
            raise LexicalRefusal(
                "this session has standard_conforming_strings off, under which a backslash"
                " can end a string early, and the gateway reads strings only the standard"
                " way; SET standard_conforming_strings = on (or use E'...' strings and"
                " send no backslash)"
            )
        if text.isascii():
            return text.decode("ascii")
        return self._decode_multibyte(text)

    def _decode_multibyte(self, text: bytes) -> str:
        encoding = self.client_encoding
        if encoding == "SQL_ASCII":
            # No conversion: the server reads the bytes in its own encoding.
            encoding = self.server_encoding
            if encoding == "SQL_ASCII":
                return text.decode("latin-1")
        if encoding in UNSAFE_ENCODINGS:
            raise LexicalRefusal(
                f"this session's client_encoding {encoding} lets a multibyte character hide"
                " a quote or a backslash from the gateway, so only ASCII statements may run;"
                " set client_encoding to UTF8"
            )
        codec = _CODECS.get(encoding)
        if codec is None:
            raise LexicalRefusal(
                f"the gateway cannot read statements in client_encoding {encoding} that hold"
                " characters outside ASCII; set client_encoding to UTF8"
            )
        try:
            return text.decode(codec)
        except UnicodeDecodeError:
            raise LexicalRefusal(
                f"the statement is not valid {encoding} text, the session's client_encoding;"
                " send it in that encoding or change client_encoding",
                sqlstates.CHARACTER_NOT_IN_REPERTOIRE,
            ) from None


def lexically_sensitive(text: bytes) -> bool:
    """Whether the text could read differently under other settings (see the module's doc)."""
    # find, not `in`: bytes.__contains__ first tries the argument as an int, and fails slowly.
    return not text.isascii() or text.find(b"\\") >= 0


def lexical_settings(startup_messages: Iterable[bytes]) -> LexicalSettings:
    """The settings the server reported at startup, from its whole ParameterStatus messages."""
    settings = LexicalSettings()
    for message in startup_messages:
        if message[:1] == b"S":
            name, value = parameter_status(message[5:])
            settings = settings.updated(name, value)
    return settings
