"""The `llmctl` command (and `python -m llmctl`): errors become one line and an exit code
here, in one place; `status` is answered without the typer app.

May import: cli, errors, stack, ui (each inside `main`). `llmctl status` is what people
and scripts run most, so as typed (`status` or `status --json`) it goes straight to
stack.py and ui.py: the typer app, and the pydantic that typer 0.29 imports to coerce
parameters, cost ~90 ms of its ~180 ms (tests/perf/bench_cli.py). Every other
command line, `--help` included, goes to cli.py.
"""

from __future__ import annotations

import os
import sys

# Command lines answered here, and whether each asks for JSON.
FAST = {("status",): False, ("status", "--json"): True}
# Words people type from other tools (ollama serve/run/ps, docker ps/kill), and ours.
MEANT = {"run": "up", "serve": "up", "ps": "status", "kill": "down",
         "shutdown": "down", "ls": "models", "list": "models", "remove": "rm"}


def main() -> None:
    from .errors import LlmctlError

    try:
        argv = tuple(sys.argv[1:])
        if argv and argv[0] in MEANT:
            from .errors import UsageError

            raise UsageError(f"llmctl has no command '{argv[0]}'",
                             f"did you mean `llmctl {MEANT[argv[0]]}`? (`llmctl --help` lists "
                             "the commands)")
        if argv in FAST:
            from . import stack, ui

            ui.show_status(stack.status_report(), as_json=FAST[argv])
        else:
            from .cli import app

            app()
    except LlmctlError as e:
        from . import ui

        ui.fail(e.message, e.hint)
        if os.environ.get("LLMCTL_DEBUG") == "1":
            raise
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
