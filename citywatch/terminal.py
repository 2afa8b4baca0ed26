"""Text from devices and installers, made safe to print on an operator's terminal.

A payload or topic may carry escape sequences (ESC [2J clears the screen, ESC ]0;...BEL retitles
the window, others have rewritten clipboards or faked earlier output). Human-facing CLI output
shows every control character escaped instead: C0 (below 0x20), DEL, C1 (0x80-0x9f), and the
Unicode line separators and bidirectional overrides that can make text read other than it is.
Machine output (--json) stays exact: JSON escapes control characters itself.
"""

from __future__ import annotations

_NAMED = {0x09: "\\t", 0x0A: "\\n", 0x0D: "\\r"}
_ESCAPES: dict[int, str] = {c: _NAMED.get(c, f"\\x{c:02x}") for c in (*range(0x20), *range(0x7F, 0xA0))}
_ESCAPES.update({c: f"\\u{c:04x}" for c in (0x200E, 0x200F, 0x2028, 0x2029, *range(0x202A, 0x202F),
                                            *range(0x2066, 0x206A))})


def for_terminal(text: str) -> str:
    """`text` with every control character shown as an escape (`\\x1b`, `\\n`, `\\u202e`)."""
    return text.translate(_ESCAPES)


def is_plain(text: str) -> bool:
    """True when `text` has nothing `for_terminal` would escape."""
    return for_terminal(text) == text
