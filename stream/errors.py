"""The package's exceptions: one root, each subclass says when it is raised."""


class StreamError(Exception):
    """Root of every error this package raises on purpose."""


class ConfigError(StreamError):
    """Raised at start-up when a setting, the policy file or a secret is missing or invalid."""


class TopicLayoutError(StreamError):
    """Raised at start-up when input topics are missing or not co-partitioned."""


class DeliveryError(StreamError):
    """Raised when the broker did not acknowledge an output record: its input must not be committed."""


class GateStallError(StreamError):
    """Raised when the freshness gate's state partitions stop yielding records below their end offsets."""
