"""Command lines that answer bad input with one line naming the problem (exit status 2), for
the entry points: `launch` and `python -m psflow.ps`."""

import argparse
import math


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line a launcher or a log shows as it is, rather
    than argparse's usage block."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def whole_number(minimum):
    """An argument type: an integer of at least `minimum`."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value
    return parse


def port(text):
    """An argument type: a TCP port, 0 (any free one) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a port number, got {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 0 to 65535, got {value}")
    return value


def _seconds(zero_allowed):
    """An argument type: a finite number of seconds, more than 0 (or 0 too)."""
    bound = "0 or more" if zero_allowed else "more than 0"

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") \
                from None
        if not (0 <= value if zero_allowed else 0 < value) or not value < math.inf:
            raise argparse.ArgumentTypeError(f"must be {bound} seconds, got {text}")
        return value
    return parse


seconds = _seconds(zero_allowed=False)
non_negative_seconds = _seconds(zero_allowed=True)  # 0 usually means no bound


def one_of(choices):
    """An argument type: one of `choices`, in any case (given back as written there)."""
    by_upper = {choice.upper(): choice for choice in choices}

    def parse(text):
        choice = by_upper.get(text.upper())
        if choice is None:
            raise argparse.ArgumentTypeError(f"must be one of {', '.join(choices)}, got {text!r}")
        return choice
    return parse
