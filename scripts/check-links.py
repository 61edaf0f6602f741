#!/usr/bin/env python3
"""Checks that every relative link in README.md, ARCHITECTURE.md and docs/*.md resolves: the file (or
folder) exists, and a `#anchor` names a heading of that file (GitHub's slugs). Prints each broken link
with its file and line; exit status 1 if any. Links to http(s) and mailto are not followed."""
import glob
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def slugs(path):
    out, fence = set(), False
    for line in open(path, encoding="utf-8"):
        if line.startswith("```"):
            fence = not fence
        m = None if fence else re.match(r"^#{1,6}\s+(.*)$", line)
        if m:
            s = m.group(1).strip().lower()
            s = re.sub(r"[^\w\- ]", "", s).replace(" ", "-")
            out.add(s)
    return out


def main():
    files = [os.path.join(ROOT, f) for f in ("README.md", "ARCHITECTURE.md")]
    files += sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))
    bad = 0
    for f in files:
        if not os.path.exists(f):
            continue
        fence = False
        for n, line in enumerate(open(f, encoding="utf-8"), 1):
            if line.startswith("```"):
                fence = not fence
            if fence:
                continue
            for target in LINK.findall(line):
                if re.match(r"^(https?:|mailto:)", target):
                    continue
                path, _, anchor = target.partition("#")
                dest = os.path.normpath(os.path.join(os.path.dirname(f), path)) if path else f
                rel = os.path.relpath(f, ROOT)
                if not os.path.exists(dest):
                    print(f"{rel}:{n}: {target}: no such file")
                    bad += 1
                elif anchor and dest.endswith(".md") and anchor not in slugs(dest):
                    print(f"{rel}:{n}: {target}: no heading #{anchor} in {os.path.relpath(dest, ROOT)}")
                    bad += 1
    print(f"links: {len(files)} files checked, {bad} broken")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
