"""What a reader sees of markdown the product renders: parsed with markdown-it-py (CommonMark, as Streamlit's
parser is) and checked with Streamlit's own GFM autolink-literal patterns, which link URLs in parsed text
whatever the escapes."""

from __future__ import annotations

import re
from html.parser import HTMLParser

from markdown_it import MarkdownIt

# Streamlit's bundled mdast-util-gfm-autolink-literal links these in parsed text, escaped or not.
STREAMLIT_AUTOLINKS = [re.compile(r"(https?://|www(?=\.))", re.I), re.compile(r"[-.\w+]+@[-\w]+(?:\.[-\w]+)+")]


class RenderedMarkdown(HTMLParser):
    """Tags, link targets and visible text of the rendered HTML."""

    def __init__(self, html: str):
        super().__init__()
        self.tags, self.hrefs, self.text = [], [], []
        self.feed(html)
        self.visible = "".join(self.text).replace("\u2060", "").strip()
        self.linkable = [p.pattern for p in STREAMLIT_AUTOLINKS if p.search("".join(self.text))]

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.hrefs += [value for name, value in attrs if name in ("href", "src")]

    def handle_data(self, data):
        self.text.append(data)


def parse(markdown: str) -> RenderedMarkdown:
    return RenderedMarkdown(MarkdownIt("commonmark").enable(["table", "strikethrough"]).render(markdown))
