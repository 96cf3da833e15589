"""An Epic-faithful FHIR R4 + OAuth 2.0 simulator for development, tests and benchmarks."""
