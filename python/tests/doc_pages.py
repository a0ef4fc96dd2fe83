"""Reading the docs' Markdown for the tests that keep them true: fenced code blocks, the
marker line before each fence that says how a test accounts for the block, and links.

Every fenced block of every page (PAGES: README.md, python/README.md, docs/*.md) carries
one marker, an HTML comment alone on the line right before its opening fence (indented
like the fence, for a block inside a list item):

  <!-- runnable -->            run against a real host, or, for a complete program, built
  <!-- runnable: ENV -->         and run; ENV names the setting the page's test provides
  <!-- compiled -->            a fragment: python compiled; C and C++ compiled in a harness
  <!-- compiled: HARNESS -->     that supplies what the fragment assumes (-Wall -Werror)
  <!-- checked: CHECK -->      text (output, a listing, bytes) compared with what the real
                                 program prints or encodes; CHECK names the comparison
  <!-- BEGIN examples/X.c -->  a verbatim copy of that file (tests/test-examples.sh)
  <!-- not run: REASON -->     a block no test can execute, such as a diagram

python/tests/test_docs.py fails on a block without a marker or with one it does not know,
and the tests of each page run what the markers promise.
"""

import glob
import os
import re
import textwrap

RUNNABLE = "<!-- runnable -->"
LINK = re.compile(r"\]\(([^)\s]+)\)")
FENCE = re.compile(r"^( *)```(\S*)\s*$")
MARKER = re.compile(r"^<!-- (runnable|compiled|checked|not run|BEGIN)(?:(:| )\s*(.*?))? -->$")
# The kinds, and whether the text after the kind is required ("not run" needs its reason).
KINDS = {"runnable": False, "compiled": False, "checked": True, "not run": True, "BEGIN": True}


def pages(source_dir):
    """Every page whose blocks the tests account for."""
    return ([os.path.join(source_dir, "README.md"), os.path.join(source_dir, "python", "README.md")]
            + sorted(glob.glob(os.path.join(source_dir, "docs", "*.md"))))


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


class Block:
    """One fenced block: its page, the line of its first source line, its language (""
    for a plain fence), the marker line before its fence, and its source (dedented)."""

    def __init__(self, path, line, language, marker, source, heading):
        self.path = path
        self.line = line
        self.language = language
        self.marker = marker
        self.source = source
        self.heading = heading  # the heading of the section holding it

    @property
    def where(self):
        return f"{os.path.basename(self.path)}:{self.line}"

    @property
    def kind(self):
        """(kind, argument) of the marker, or (None, None) if the line before the fence
        is not a marker this module knows."""
        m = MARKER.match(self.marker)
        if not m or (m[1] == "BEGIN") != (m[2] == " "):
            return None, None
        if KINDS[m[1]] and not m[3]:
            return None, None
        return m[1], m[3] or ""

    def __repr__(self):
        return f"<Block {self.where} {self.language or 'plain'} {self.marker!r}>"


def blocks(path):
    """Every fenced block of path, in order (fences may be indented, as in list items)."""
    lines = read_lines(path)
    found = []
    heading = ""
    i = 0
    while i < len(lines):
        if lines[i].startswith("#"):
            heading = lines[i].lstrip("#").strip()
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, language = m[1], m[2]
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != indent + "```":
            end += 1
        if end == len(lines):
            raise AssertionError(f"{path}:{i + 1}: a code block that is never closed")
        marker = lines[i - 1].strip() if i > 0 else ""
        source = textwrap.dedent("\n".join(lines[i + 1 : end])) + "\n"
        found.append(Block(path, i + 2, language, marker, source, heading))
        i = end + 1
    return found


def fenced_blocks(path, language="python"):
    """Every ```language block of path: (line of its first source line, the marker line
    before its fence, source)."""
    return [(b.line, b.marker, b.source) for b in blocks(path) if b.language == language]


def marked(path, kind, language=None):
    """The blocks of path whose marker is of kind (and argument-less form included)."""
    return [b for b in blocks(path) if b.kind[0] == kind
            and (language is None or b.language == language)]


def shape(text):
    """text with its numbers, versions and paths made alike and its spacing collapsed: what
    a listing must share with the real output, whose pids, times and paths differ."""
    text = re.sub(r"/\S*/", "/.../", text)
    # A number with its unit: 3.11.2, 1m12s, 2s, 1.2 KiB and 446 B are all N.
    text = re.sub(r"\d[\d.]*(?:[a-z]+\d[\d.]*)*(?:(?<=\d)(?:ms|s|m|h)\b)?"
                  r"(?:\s?(?:KiB|MiB|GiB|B)\b)?", "N", text)
    return [" ".join(line.split()) for line in text.splitlines() if line.strip()]


def same_shape(documented, real):
    return shape(documented) == shape(real)


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
