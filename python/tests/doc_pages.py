"""Reading the docs' Markdown for the tests that keep them true: fenced code blocks
(with the marker line before each fence, such as "<!-- runnable -->") and links."""

import os
import re
import textwrap

RUNNABLE = "<!-- runnable -->"
LINK = re.compile(r"\]\(([^)\s]+)\)")


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def fenced_blocks(path, language="python"):
    """Every ```language block of path: (line of its first source line, the marker line
    before its fence, source)."""
    lines = read_lines(path)
    blocks = []
    i = 0
    while i < len(lines):
        if lines[i].strip() != f"```{language}":
            i += 1
            continue
        end = i + 1
        while end < len(lines) and lines[end].strip() != "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"{path}:{i + 1}: a code block that is never closed")
        marker = lines[i - 1].strip() if i > 0 else ""
        source = textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n"
        blocks.append((i + 2, marker, source))
        i = end + 1
    return blocks


def github_anchor(heading):
    """The anchor GitHub gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path):
    found = set()
    in_code = False
    for line in read_lines(path):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        elif not in_code and line.startswith("#"):
            base = github_anchor(line.lstrip("#"))
            anchor, n = base, 0
            while anchor in found:  # repeated headings get -1, -2, ...
                n += 1
                anchor = f"{base}-{n}"
            found.add(anchor)
    return found


def broken_links(path):
    """The relative links of path (outside code) whose file or anchor does not exist."""
    text = "\n".join(read_lines(path))
    text = re.sub(r"```.*?```", "", text, flags=re.S)  # links inside code are not links
    text = re.sub(r"`[^`\n]*`", "", text)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):
            continue  # http:, https:, mailto:
        file_part, _, anchor = target.partition("#")
        resolved = (os.path.normpath(os.path.join(os.path.dirname(path), file_part))
                    if file_part else path)
        if not os.path.exists(resolved):
            broken.append(target)
        elif anchor and resolved.endswith(".md") and anchor not in anchors(resolved):
            broken.append(target)
    return broken
