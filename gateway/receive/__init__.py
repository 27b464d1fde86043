"""Reception: DICOM associations (C-STORE), STOW-RS, reconciliation after a crash, series completion."""
