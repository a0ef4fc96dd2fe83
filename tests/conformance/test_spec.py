"""docs/protocol.md's "Conformance" section and this suite stay in step: every test it
names exists, and every test of the suite is named there."""

import ast
import os
import re

from conftest import SOURCE_DIR

HERE = os.path.dirname(os.path.abspath(__file__))


def suite_tests():
    names = set()
    for fname in sorted(os.listdir(HERE)):
        if fname.startswith("test_") and fname.endswith(".py"):
            with open(os.path.join(HERE, fname), encoding="utf-8") as f:
                tree = ast.parse(f.read())
            names |= {
                f"{fname}::{node.name}"
                for node in tree.body
                if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")
            }
    return names


def test_conformance_section_lists_every_test():
    with open(os.path.join(SOURCE_DIR, "docs", "protocol.md"), encoding="utf-8") as f:
        text = f.read()
    section = text.split("\n## 15. Conformance\n", 1)[1]
    named = re.findall(r"`(test_\w+\.py::test_\w+)`", section)
    assert len(named) == len(set(named)), "a test is named twice"
    tests = suite_tests()
    assert set(named) - tests == set(), "named in protocol.md but not in the suite"
    assert tests - set(named) == set(), "in the suite but not named in protocol.md"
