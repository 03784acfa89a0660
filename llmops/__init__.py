"""llmops: the small shared core (config, registry, assets, monitoring, CLI) of the platform."""

__version__ = "0.1.0"
