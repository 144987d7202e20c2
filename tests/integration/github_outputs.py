"""Read a $GITHUB_OUTPUT file as the GitHub runner does (for the GitHub-mode tests)."""

from __future__ import annotations


def parse_outputs(text: str) -> dict[str, str]:
    """``name=value`` lines and ``name<<DELIMITER`` heredocs, in file order."""
    values: dict[str, str] = {}
    lines = iter(text.split("\n"))
    for line in lines:
        if not line:
            continue
        if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
            name, delimiter = line.split("<<", 1)
            body = []
            for item in lines:
                if item == delimiter:
                    break
                body.append(item)
            else:
                raise AssertionError(f"unterminated heredoc {delimiter!r} in {text!r}")
            values[name] = "\n".join(body)
        else:
            name, value = line.split("=", 1)
            values[name] = value
    return values
