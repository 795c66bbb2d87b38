"""What a browser submits for a form on a page, so the test client can post it as rendered."""

from __future__ import annotations

from html.parser import HTMLParser

UNSENT_INPUTS = frozenset({"submit", "button", "file", "reset", "image"})


class _FormFields(HTMLParser):
    """The fields of the form with id ``form_id``, as a browser submits them: inputs with their
    values (checkboxes and radios only when checked), each select's selected options (a single
    select with none selected sends its first), textareas with their text."""

    def __init__(self, form_id: str) -> None:
        super().__init__()
        self.form_id = form_id
        self.inside = False
        self.data: dict[str, list[str]] = {}
        self.select: tuple[str, bool] | None = None  # name, multiple
        self.options: list[tuple[str, bool]] = []
        self.textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "form":
            self.inside = a.get("id") == self.form_id
        if not self.inside or "disabled" in a:
            return
        name = a.get("name")
        if tag == "input" and name:
            kind = a.get("type") or "text"
            if kind in UNSENT_INPUTS or (kind in ("checkbox", "radio") and "checked" not in a):
                return
            default = "on" if kind in ("checkbox", "radio") else ""
            self.data.setdefault(name, []).append(a.get("value") or default)
        elif tag == "select" and name:
            self.select, self.options = (name, "multiple" in a), []
        elif tag == "option" and self.select is not None:
            self.options.append((a.get("value") or "", "selected" in a))
        elif tag == "textarea" and name:
            self.textarea = name
            self.data[name] = [""]

    def handle_data(self, data: str) -> None:
        if self.textarea is not None:
            self.data[self.textarea][0] += data

    def handle_endtag(self, tag: str) -> None:
        if tag == "form":
            self.inside = False
        elif tag == "select" and self.select is not None:
            name, multiple = self.select
            chosen = [value for value, selected in self.options if selected]
            if not chosen and not multiple and self.options:
                chosen = [self.options[0][0]]
            if chosen:
                self.data[name] = chosen
            self.select = None
        elif tag == "textarea":
            self.textarea = None


def form_fields(html: str, form_id: str) -> dict[str, list[str]]:
    """The data a browser posts when the form ``form_id`` of ``html`` is submitted untouched."""
    parser = _FormFields(form_id)
    parser.feed(html)
    if not parser.data:
        raise AssertionError(f"no form with id {form_id!r} (or no fields in it) on the page")
    return parser.data
