"""The one error hierarchy of llmctl. May import: nothing of the package.

    LlmctlError(message, hint)        exit 1; the CLI prints the message and a `hint:` line
     ├── UsageError                   exit 2; bad flags or arguments
     ├── ConflictError                what was typed is fine, but something by that name (a key,
     │                                a file) exists: the state is in the way, not the usage
     ├── ConfigError                  the config file or environment is wrong
     ├── ModelError                   a model is unknown, not pulled, or cannot be prepared
     ├── PlanError                    the models do not fit the machine (says by how much, and what would)
     ├── StackError                   the daemon or a backend failed, or the stack is in the way
     └── ApiError                     an OpenAI-compatible server refused, failed or is unreachable

The core raises these; only the CLI turns them into output and exit codes.
"""

from __future__ import annotations


class LlmctlError(Exception):
    exit_code = 1

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message


class UsageError(LlmctlError):
    exit_code = 2


class ConflictError(LlmctlError):
    pass


class ConfigError(LlmctlError):
    pass


class ModelError(LlmctlError):
    pass


class StackError(LlmctlError):
    pass


class ApiError(LlmctlError):
    def __init__(self, message: str, hint: str | None = None, *, status: int | None = None,
                 code: str | None = None) -> None:
        super().__init__(message, hint)
        self.status = status  # the HTTP status, when the server answered
        self.code = code  # OpenAI's error code, when it sent one ("model_not_ready")


class PlanError(LlmctlError):
    pass
