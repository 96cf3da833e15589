"""The Kafka glue's exception tree."""


class KafkaGlueError(Exception):
    """Base class for errors raised by the Kafka glue."""


class TopicConfigError(KafkaGlueError):
    """A topic exists with settings the bridge cannot work with (e.g. an internal topic not compacted)."""


class TopicCreationError(KafkaGlueError):
    """The broker refused to create a topic."""
