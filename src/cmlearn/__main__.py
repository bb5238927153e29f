"""``python -m cmlearn`` and the ``cmlearn`` command."""

import os
import signal


def run() -> None:
    """Ctrl-C before ``main`` takes over (even inside the first imports, on a busy machine)
    ends the process at once with the conventional status 130, without a traceback."""
    signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    from cmlearn.app.cli import exit_process, main

    exit_process(main())


if __name__ == "__main__":
    run()
