"""Change hints: HL7v2 messages (over MLLP) and records on the hints topic that say which patient just
changed, turned into scan requests. A hint only ever causes a scan; see docs/hints.md."""
