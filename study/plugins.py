"""User code named in a config as ``"package.module:attribute"`` (a model builder, a loss):
imported like a plugin, from the working directory, the config's folder (the CLI puts it
on the import path) or any installed package. A module that cannot be imported, or lacks the
attribute, is bad input in one line; what the user's code raises while it is imported is
said in one line too, naming whose it is.
"""

from __future__ import annotations

import importlib
import os
import sys

from study.errors import ConfigError

MESSAGE_MAX = 300


def one_line(err: BaseException) -> str:
    """An exception's message as one plain line of at most ``MESSAGE_MAX`` characters."""
    import re

    # Terminal escapes (Keras prints parts of its errors in bold) and the arguments Keras
    # appends to an error raised inside a layer's call: neither belongs in one line.
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(err)).split("Arguments received by")[0]
    text = " ".join(text.split())
    return text if len(text) <= MESSAGE_MAX else text[:MESSAGE_MAX - 3] + "..."


def add_to_path(folder: str) -> None:
    """Put ``folder`` first on the import path, as ``python script.py`` does the script's."""
    folder = os.path.abspath(folder)
    if folder not in sys.path:
        sys.path.insert(0, folder)


def import_object(key: str, path: str, what: str = "package.module:function"):
    """The object ``path`` names (``package.module:attribute``); ``key`` is the config key
    a message names."""
    module_name, _, attribute = path.partition(":")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{key}: cannot import {path!r} ({one_line(err)}); give "
                          f"'{what}', importable from the working directory or the "
                          "config's folder") from None
    except SystemExit as err:
        raise ConfigError(f"{key}: importing {path!r} called sys.exit({err.code!r})") from None
    except Exception as err:  # the user's module failed as it ran: say so, in one line
        raise ConfigError(f"{key}: importing {path!r} failed with {type(err).__name__}: "
                          f"{one_line(err)}") from None
    if not callable(found):
        raise ConfigError(f"{key}: {path!r} is not callable")
    return found
