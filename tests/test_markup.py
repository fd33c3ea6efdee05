"""study.markup against the renderer the report uses: hostile strings rendered by
nbconvert's Markdown (mistune, as the report's HTML export does) come out as the text typed,
never as markup; and the hand-checked escapes."""

from __future__ import annotations

import html.parser

import pandas as pd
import pytest

from study.markup import html as html_text
from study.markup import md_block, md_code, md_lines, md_text, table

HOSTILE = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(2)>",
    "x`<b>bold</b>``y",
    "`lead and trail`",
    "a_b *c* [link](javascript:alert(3)) ![i](x) $x^2$ & &amp; \\ # h | t ~ s",
    "line one\n\n<script>alert(4)</script>\n# heading",
    "it's \"quoted\"",
]


class _Text(html.parser.HTMLParser):
    """The text and the tags of rendered HTML."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.text, self.tags = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)

    def handle_data(self, data):
        self.text.append(data)


def _render(markdown: str) -> _Text:
    from nbconvert.filters.markdown_mistune import markdown2html_mistune

    parsed = _Text()
    parsed.feed(markdown2html_mistune(markdown))
    return parsed


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.mark.parametrize("text", HOSTILE)
def test_md_text_renders_as_the_text_typed(text):
    rendered = _render(f"Study {md_text(text)} done")
    assert rendered.tags == ["p"]
    assert _flat("".join(rendered.text)) == _flat(f"Study {text} done")


@pytest.mark.parametrize("text", HOSTILE)
def test_md_code_renders_as_one_code_span_of_the_text(text):
    rendered = _render(f"**Study {md_code(text)}**: 4 arms")
    assert rendered.tags == ["p", "strong", "code"]
    code = rendered.text[1]
    assert _flat(code) == _flat(text)


def test_md_block_cannot_be_closed_early():
    body = "tags.start = 'a'\n```\n<b>x</b>"
    rendered = _render("\n".join(md_block(body)) + "\n\nafter")
    assert rendered.tags == ["pre", "code", "p"]
    assert rendered.text[0] == body + "\n"


def test_md_lines_is_one_bullet_per_sentence():
    rendered = _render(md_lines(["From <b>a</b>: 2x", "1. not a list"]))
    assert rendered.tags == ["ul", "li", "li"]
    assert [t for t in rendered.text if t.strip()] == ["From <b>a</b>: 2x", "1. not a list"]


def test_hand_checked_escapes():
    assert md_text("a_b <i> 1.5") == r"a\_b &lt;i&gt; 1\.5"
    assert md_code("a`b") == "``a`b``"
    assert md_code("`a") == "`` `a ``"
    assert html_text("<a href='x'>&") == "&lt;a href=&#x27;x&#x27;&gt;&amp;"


def test_a_styled_table_escapes_cells_and_labels():
    frame = pd.DataFrame({"<b>loss</b>": ["<script>alert(1)</script>"]},
                         index=pd.Index(["<img src=x onerror=alert(2)>"], name="start"))
    rendered = table(frame.style).to_html()
    assert "<script>" not in rendered and "<img" not in rendered and "<b>" not in rendered
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in rendered
    assert "&lt;img src=x onerror=alert(2)&gt;" in rendered and "&lt;b&gt;loss" in rendered
