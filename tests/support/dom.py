"""A small DOM of an HTML text, to test what a page shows: elements, their text, ids."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from html.parser import HTMLParser


@dataclass
class Node:
    tag: str
    attrs: dict[str, str]
    children: list[Node | str] = field(default_factory=list)

    def text(self) -> str:
        """The text inside, markup decoded, as ``textContent`` gives it."""
        return "".join(c if isinstance(c, str) else c.text() for c in self.children)

    def words(self) -> str:
        """The text as read: whitespace squeezed, and blocks (paragraphs, cells, list
        items, code blocks ...) apart from their neighbours."""
        return squeeze(self._spaced())

    def _spaced(self) -> str:
        inner = "".join(c if isinstance(c, str) else c._spaced() for c in self.children)
        return f" {inner} " if self.tag in _BLOCKS else inner

    def walk(self) -> list[Node]:
        found = [self]
        for child in self.children:
            if isinstance(child, Node):
                found.extend(child.walk())
        return found

    def by_id(self, id_: str) -> Node:
        (node,) = [n for n in self.walk() if n.attrs.get("id") == id_]
        return node

    def tags(self) -> set[str]:
        return {n.tag for n in self.walk()}

    def definitions(self) -> dict[str, str]:
        """Each <dt>'s text and the text of the <dd> after it, spaces squeezed."""
        items = [n for n in self.walk() if n.tag in ("dt", "dd")]
        return {dt.words(): dd.words()
                for dt, dd in itertools.pairwise(items)
                if (dt.tag, dd.tag) == ("dt", "dd")}


_BLOCKS = {
    "p", "div", "pre", "td", "th", "tr", "li", "ul", "dl", "dt", "dd", "br", "h1", "h2",
    "section", "header", "footer", "main", "nav", "details", "summary", "table",
}
_VOID = {"meta", "link", "br", "img", "input", "hr", "wbr", "source", "col"}


class _Builder(HTMLParser):
    """The tree of well-formed HTML (a page the bridge renders, the DOM chromium dumps);
    an end tag closes the elements left open inside it."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.root = Node("#document", {})
        self._stack = [self.root]

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        node = Node(tag, {k: v or "" for k, v in attrs})
        self._stack[-1].children.append(node)
        if tag not in _VOID:
            self._stack.append(node)

    def handle_endtag(self, tag: str) -> None:
        if tag in _VOID:
            return
        while self._stack[-1].tag != tag:
            self._stack.pop()
        self._stack.pop()

    def handle_data(self, data: str) -> None:
        self._stack[-1].children.append(data)


def parse(html: str) -> Node:
    builder = _Builder()
    builder.feed(html)
    builder.close()
    return builder.root


def squeeze(text: str) -> str:
    return " ".join(text.split())
