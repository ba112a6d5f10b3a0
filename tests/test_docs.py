"""The READMEs' figures come from files in the repository: every image and results link
resolves, and every linked JSON parses."""
import json
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md", os.path.join("benchmarks", "README.md")]
# ![alt](path) images, and `results/...json|png` or (results/...) mentions
LINK = re.compile(r"!\[[^\]]*\]\(([^)\s]+)\)|`(results/[\w./-]+\.(?:json|png))`")


def _links(doc):
    text = open(os.path.join(ROOT, doc), encoding="utf-8").read()
    base = os.path.dirname(os.path.join(ROOT, doc))
    out = []
    for m in LINK.finditer(text):
        target = m.group(1) or m.group(2)
        if "://" in target or "<" in target:
            continue
        out.append(os.path.normpath(os.path.join(base, target)))
    return out


@pytest.mark.parametrize("doc", DOCS)
def test_every_linked_figure_is_in_the_repository(doc):
    links = _links(doc)
    if doc != "README.md":  # benchmarks/README.md is built on its figures
        assert len(links) >= 10, f"{doc} links only {links}"
    missing = [os.path.relpath(p, ROOT) for p in links if not os.path.isfile(p)]
    assert not missing, f"{doc} links files that are not in the repository: {missing}"
    for p in links:
        if p.endswith(".json"):
            with open(p, encoding="utf-8") as f:
                json.load(f)
