"""Tables and collapsible blocks for the benchmarks' plain and Markdown reports."""

from __future__ import annotations


def _cells(row: list[str], widths: list[int]) -> str:
    return "  ".join(
        c.ljust(w) if i == 0 else c.rjust(w)
        for i, (c, w) in enumerate(zip(row, widths, strict=True))
    )


def plain_table(head: list[str], body: list[list[str]]) -> str:
    """Aligned columns for a terminal: the first left, the figures right."""
    widths = [max(len(c) for c in col) for col in zip(head, *body, strict=True)]
    lines = [_cells(head, widths), "  ".join("-" * w for w in widths)]
    lines += [_cells(row, widths) for row in body]
    return "\n".join(lines)


def md_table(head: list[str], body: list[list[str]]) -> str:
    """A Markdown table: the first column left-aligned, the figures right-aligned."""
    align = ["---"] + ["---:" for _ in head[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in body]
    return "\n".join(lines)


def details(title: str, body: str) -> list[str]:
    """A collapsed block (for query plans) as Markdown lines."""
    return ["", f"<details><summary>{title}</summary>", "", "```", body, "```", "", "</details>"]
