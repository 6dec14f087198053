"""What every command-line entry point shares: console logging and one exit-code convention."""
from __future__ import annotations

import logging
from typing import Callable

logger = logging.getLogger("slimneck")

USAGE_ERRORS = (FileNotFoundError, ValueError)  # bad input: say what is wrong, exit 2, no traceback


def run_command(action: Callable[[], object]) -> int:
    """Run ``action`` with INFO logging to the console. Returns 0, 2 for bad input (the message is logged),
    or 130 after Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        action()
    except KeyboardInterrupt:
        return 130
    except USAGE_ERRORS as error:
        logger.error("error: %s", error)
        return 2
    return 0
