"""cliproxy's proxy: an OpenAI-compatible gateway in front of many LLM providers."""

__version__ = "0.1.0"
