"""Storage: the only code that touches state rows and stored files."""
