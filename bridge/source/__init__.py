"""Source side: detect created and updated FHIR resources and publish them as events."""
