"""SQL analysis: what a statement reads, writes and risks, from pglast's parse tree."""
