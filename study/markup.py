"""Markup: user strings made safe for the Markdown and HTML the report writes.

Study and experiment names, optimizer labels, loss and init names come from configs and
from MLflow (anyone can rename an experiment there), and reach three renderers: the report
notebook's Markdown outputs (nbconvert turns them into HTML and passes raw HTML through),
its pandas tables, and the parent run's description in MLflow's UI. Every such string goes
through one of these helpers, so it shows as typed and never as markup or script.
"""

from __future__ import annotations

import html as _html
import re

# Markdown's active punctuation, the set that both CommonMark (nbconvert) and showdown (MLflow's
# UI) unescape, gets a backslash; <, >, &, quotes and $ (nbconvert would start a formula at it)
# become HTML entities, which every renderer keeps as text. One pass, so no entity is escaped.
_ENTITIES = {"<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;", "'": "&#39;", "$": "&#36;"}
_MARKDOWN_SPECIAL = re.compile(r"[\\`*_{}\[\]()#+\-.!|~=:<>&\"'$]")
_LINE_BREAKS = re.compile(r"[\r\n\u2028\u2029\x0b\x0c\x85]+")


def html(text: object) -> str:
    """``text`` as HTML text: <, >, &, and both quotes as entities."""
    return _html.escape(str(text), quote=True)


def md_text(text: object) -> str:
    """``text`` as literal Markdown text inside a sentence: HTML-escaped, Markdown
    punctuation backslash-escaped, line breaks as spaces (a blank line would end the
    paragraph, and a new one may start a heading or raw HTML)."""
    flat = _LINE_BREAKS.sub(" ", str(text))
    return _MARKDOWN_SPECIAL.sub(lambda m: _ENTITIES.get(m[0], "\\" + m[0]), flat)


def md_code(text: object) -> str:
    """``text`` as a Markdown code span: fenced by one backtick more than its longest run
    of backticks, padded with spaces when it starts or ends with one (CommonMark's rule; a
    code span's content is literal, so nothing inside is escaped but line breaks)."""
    flat = _LINE_BREAKS.sub(" ", str(text))
    fence = "`" * (max((len(run) for run in re.findall(r"`+", flat)), default=0) + 1)
    pad = " " if flat.startswith("`") or flat.endswith("`") else ""
    return f"{fence}{pad}{flat}{pad}{fence}"


def md_block(text: object) -> list[str]:
    """``text`` as a fenced code block's lines: a fence of backticks longer than any run
    inside (at least three), so no line of it can close the block early."""
    body = str(text)
    fence = "`" * max(3, max((len(run) for run in re.findall(r"`+", body)), default=0) + 1)
    return [fence, *body.splitlines(), fence]


def md_lines(lines) -> str:
    """Sentences as a Markdown bullet list, each escaped as text."""
    return "\n".join(f"- {md_text(line)}" for line in lines)


def table(styler):
    """A pandas Styler with its cells and index and column labels HTML-escaped (a Styler
    renders them raw; a plain DataFrame's HTML escapes them already). Index names stay as
    they are: the analysis code names them."""
    return (styler.format(escape="html").format_index(escape="html", axis=0)
            .format_index(escape="html", axis=1))
