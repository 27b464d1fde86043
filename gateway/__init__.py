"""enhance-gateway: the DICOM service (SCP, spool, state, completion, worker, sender, CLI)."""

__version__ = "0.1.0"
