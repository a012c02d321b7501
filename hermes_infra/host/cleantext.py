"""Text that came from a host, made safe for a terminal or a log (an agent may have written it:
file names, its API's answers, a lying manifest, an audit line)."""
from __future__ import annotations


def clean(text: object, limit: int = 400) -> str:
    """Control, format and bidi characters (escape sequences) replaced by `?`, length bounded."""
    value = "" if text is None else str(text)
    value = "".join(ch if ch.isprintable() or ch == " " else "?" for ch in value)
    return value if len(value) <= limit else value[: limit - 1] + "~"


def clean_lines(text: object, limit: int = 20000, line_limit: int = 2000) -> str:
    """`clean` for each line of a multi-line output, the line breaks kept, the whole bounded."""
    value = "" if text is None else str(text)
    joined = "\n".join(clean(line, line_limit) for line in value.splitlines())
    return joined if len(joined) <= limit else joined[: limit - 1] + "~"
