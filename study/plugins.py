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
# The folders this process put on the import path for user code (the config's folder, the
# working directory): a Ray worker is given them too (``executors``), so that it imports the
# same modules.
FOLDERS: list[str] = []


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
    if folder not in FOLDERS:
        FOLDERS.append(folder)


def import_object(key: str, path: str, what: str = "package.module:function", *,
                  it: bool = False, where: str = "the working directory or the config's folder"):
    """The object ``path`` names (``package.module:attribute``), callable. Messages start
    with ``key``, the config key, and name ``path`` after it (``model.builder: cannot import
    'x:y'``); with ``it``, they name both up front and say "it" after (``dataset 'x:y':
    cannot import it``), as a dataset's messages do. ``where`` is where to put the module."""
    module_name, _, attribute = path.partition(":")
    head, named = (f"{key} {path!r}", "it") if it else (key, repr(path))
    if os.getcwd() not in sys.path and "" not in sys.path:
        add_to_path(os.getcwd())
    try:
        found = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as err:
        raise ConfigError(f"{head}: cannot import {named} ({one_line(err)}); give "
                          f"'{what}', importable from {where}") from None
    except SystemExit as err:
        raise ConfigError(f"{head}: importing {named} called sys.exit({err.code!r})") from None
    except Exception as err:  # the user's module failed as it ran: say so, in one line
        raise ConfigError(f"{head}: importing {named} failed with {type(err).__name__}: "
                          f"{one_line(err)}") from None
    if not callable(found):
        raise ConfigError(f"{head} is not callable" if it else
                          f"{key}: {path!r} is not callable")
    return found
