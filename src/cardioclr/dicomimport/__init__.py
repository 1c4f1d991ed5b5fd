"""``cardioclr import``: PACS/scanner DICOM exports -> an ACDC-layout dataset (4D cine NIfTI,
ED/ES frames, Info.cfg), with pseudonymous IDs and a report of every series."""
