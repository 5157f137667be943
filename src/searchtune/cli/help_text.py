"""Docstrings made fit for ``--help``: reStructuredText markup read as plain text.

A module docstring that doubles as a command's description is written for the API docs
(````REF````, ``:func:`x```); a terminal shows those characters as they are.
"""

import re

_ROLE = re.compile(r":[a-z]+:`([^`]+)`")  # :func:`searchtune.cli.main` -> searchtune.cli.main
_LITERAL = re.compile(r"``([^`]+)``")  # ``REF`` -> REF
_INTERPRETED = re.compile(r"`([^`]+)`")  # `make run` -> 'make run'


def plain_text(docstring: str) -> str:
    """The docstring with its inline markup turned into the text a reader means."""
    text = _ROLE.sub(r"\1", docstring)
    text = _LITERAL.sub(r"\1", text)
    return _INTERPRETED.sub(r"'\1'", text)


def first_paragraph(docstring: str) -> str:
    """The summary of a docstring (up to its first blank line), on one line and in plain text."""
    return " ".join(plain_text(docstring).strip().split("\n\n")[0].split())
