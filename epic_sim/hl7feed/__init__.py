"""The HL7v2 feed a hospital's interface engine would send about the simulator's own activity (MLLP)."""
