"""`tf.logging`: TF1's logging calls on Python's logging (logger "psflow")."""

import logging as _logging

DEBUG, INFO, WARN, ERROR, FATAL = (_logging.DEBUG, _logging.INFO, _logging.WARNING,
                                   _logging.ERROR, _logging.CRITICAL)
_log = _logging.getLogger("psflow")


def set_verbosity(level):
    _log.setLevel(level)
    if not _logging.getLogger().handlers and not _log.handlers:
        _logging.basicConfig(format="%(levelname)s:%(name)s:%(message)s")


def get_verbosity():
    return _log.getEffectiveLevel()


def debug(msg, *args):
    _log.debug(msg, *args)


def info(msg, *args):
    _log.info(msg, *args)


def warning(msg, *args):
    _log.warning(msg, *args)


warn = warning


def error(msg, *args):
    _log.error(msg, *args)


def fatal(msg, *args):
    _log.critical(msg, *args)
