"""llmctl: one workstation, a private OpenAI-compatible model server."""

__version__ = "0.1.0"
