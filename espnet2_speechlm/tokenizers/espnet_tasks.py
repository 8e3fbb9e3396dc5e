"""ESPnet task classes, imported without the downloads their imports start.

Importing any ``espnet2.tasks`` module imports ``g2p_en``, which calls
``nltk.download`` for its dictionaries at import time: offline that prints
download errors, online it fetches data, though no model read here uses
them. ``espnet_task`` imports a task class with ``nltk.download`` turned into
a no-op for the duration of the import.
"""

from __future__ import annotations

import contextlib
import importlib


@contextlib.contextmanager
def no_nltk_downloads():
    try:
        import nltk
    except ImportError:  # espnet without its text front-ends
        yield
        return
    saved = nltk.download
    nltk.download = lambda *args, **kwargs: False
    try:
        yield
    finally:
        nltk.download = saved


def espnet_task(module: str, name: str):
    """``espnet_task("espnet2.tasks.ssl", "SSLTask")``: the class, imported offline."""
    with no_nltk_downloads():
        return getattr(importlib.import_module(module), name)
