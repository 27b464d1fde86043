"""DICOM networking shared by the stages: SCU associations, C-GET/C-MOVE retrieval, TLS."""
