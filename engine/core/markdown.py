"""Text from documents, MLflow, URLs, users or errors, made safe to show where Streamlit renders Markdown.

Every Streamlit element that shows a string (st.markdown, st.title, st.caption, st.error, labels...) parses it as
CommonMark plus GFM, math, Streamlit's directives (`:red[...]`, `:material/icon:`) and emoji shortcodes. Such text
goes through `escape_markdown` first, the product's one escaping helper, so it can neither link, load an image,
inject HTML, start a heading, list, quote, table or code block, nor restyle the page.
"""

from __future__ import annotations

import re

_ASCII_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
WORD_JOINER = "\u2060"  # invisible; breaks the patterns that match after parsing, where escapes are gone
# Matched by Streamlit whatever the escapes: GFM autolink literals (http://, www., e-mail) and emoji shortcodes
# (:smile:) on parsed text, and `:material/` on the source (rewritten to `:material_` before parsing).
_AFTER_PARSING = re.compile(r"(?i)(?<=:)(?=//|material/|[\w+-][\w+-]*:)|(?<=www)(?=\.)|(?=@)")
_LINE_BREAKS = re.compile(r"[ \t]*(?:\r\n|\r|\n|\u2028|\u2029)\s*")


def escape_markdown(text: object) -> str:
    """`text` as Markdown that Streamlit shows exactly as written: every ASCII punctuation character is
    backslash-escaped (links, images, HTML, emphasis, headings, code, tables, `$` math, `:` directives and
    icons), the patterns Streamlit matches after parsing are broken by an invisible word joiner, and line
    breaks become hard breaks inside one paragraph (no blank line, so no indented code block or new block)."""
    text = _AFTER_PARSING.sub(WORD_JOINER, "" if text is None else str(text))
    return _LINE_BREAKS.sub("  \n", _ASCII_PUNCTUATION.sub(r"\\\1", text))
