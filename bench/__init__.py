"""Benchmarks: each prints our figure next to a peer or limit measured in the same run."""


def rate_table(rows: list[tuple[str, str, str]], unit: str) -> list[str]:
    """Lines of a table of (what, rate, note) rows under a `unit` header, names left-aligned."""
    width = max(len(r[0]) for r in rows)
    rate_width = len(unit) + 1
    lines = [f"{'':{width}}  {unit:>{rate_width}}"]
    lines += [f"{name:{width}}  {rate:>{rate_width}}  {note}".rstrip() for name, rate, note in rows]
    return lines
