"""The pynetdicom fast path (event-driven DUL, C-STORE assembled in the DUL thread): version-fenced."""
