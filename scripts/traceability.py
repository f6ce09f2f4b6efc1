#!/usr/bin/env python3
"""Requirement traceability: which requirements are modelled, implemented and tested.

Reads the requirement list from docs/spec/requirements.md (lines `- **ID** (LEVEL) text`),
finds every citation of those ids in the tree (Rust, SQL and JSON files: an id on a line
with `Requirement:` or continuing such a line, or an id as a string literal), and
writes docs/spec/traceability.md: per requirement, whether it is

- modelled:    cited in the model (model/src),
- implemented: cited in the server or client sources (impl/*/src, impl/*/migrations),
- tested:      cited in a test: a unit-test module of the sources (`#[cfg(test)] mod`),
               the model checker and scenarios (model/tests), the
               conformance suites (conformance/), the server's and client's tests
               (impl/*/tests), the end-to-end and threat-model tests (tests/,
               threat-model-tests/), or a fuzz target (fuzz/),

with file:line references. It prints the requirements that have no test.

    scripts/traceability.py [--output FILE] [--strict]

Exit status: 0, unless --strict is given and some requirement has no test or some MUST
requirement is neither implemented nor modelled (then 1). Standard library only.
"""

import argparse
import os
import re
import sys

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
REQUIREMENTS = os.path.join(ROOT, "docs", "spec", "requirements.md")
DEFAULT_OUTPUT = os.path.join(ROOT, "docs", "spec", "traceability.md")

LINE = re.compile(r"^- \*\*([A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*-\d+)\*\* \((MUST|SHOULD)\) (.*)$")
TOKEN = re.compile(r"\b([A-Z][A-Z0-9]*(?:-[A-Z0-9]+)*-\d+)\b")
SKIP_DIRS = {"target", ".git", "node_modules", "corpus", "artifacts"}
EXTENSIONS = (".rs", ".json", ".sql")
MAX_REFS = 4


def read_requirements():
    reqs = []
    current = None
    with open(REQUIREMENTS, encoding="utf-8") as f:
        for line in f:
            line = line.rstrip("\n")
            m = LINE.match(line)
            if m:
                current = {"id": m.group(1), "level": m.group(2), "text": m.group(3)}
                reqs.append(current)
            elif current and line.startswith("  ") and line.strip():
                current["text"] += " " + line.strip()
            else:
                current = None
    return reqs


def category(path):
    """Which column a citation in `path` (relative to the root) counts for, if any."""
    parts = path.split(os.sep)
    if parts[0] == "model":
        return "tested" if len(parts) > 1 and parts[1] == "tests" else "modelled"
    if parts[0] == "impl" and len(parts) > 2:
        if parts[2] == "tests":
            return "tested"
        if parts[2] in ("src", "migrations"):
            return "implemented"
        return None
    if parts[0] in ("conformance", "tests", "threat-model-tests", "fuzz"):
        return "tested"
    return None


def scan(ids):
    found = {i: {"modelled": [], "implemented": [], "tested": []} for i in ids}
    for dirpath, dirnames, filenames in os.walk(ROOT):
        dirnames[:] = [d for d in dirnames if d not in SKIP_DIRS]
        for name in sorted(filenames):
            if not name.endswith(EXTENSIONS):
                continue
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, ROOT)
            column = category(rel)
            if column is None:
                continue
            try:
                with open(path, encoding="utf-8") as f:
                    lines = f.readlines()
            except (UnicodeDecodeError, OSError):
                continue
            continued = False
            in_tests = False
            for number, line in enumerate(lines, 1):
                # A unit-test module of the sources (`#[cfg(test)]` then `mod ...`, by
                # convention at the end of the file): its citations count as tests.
                if (
                    column == "implemented"
                    and line.strip().startswith("mod ")
                    and number >= 2
                    and lines[number - 2].strip() == "#[cfg(test)]"
                ):
                    in_tests = True
                line_column = "tested" if in_tests else column
                # A citation: an id on a line that says "Requirement:" or continues such a
                # line's list (it ended with a comma), or an id as a string literal (the
                # conformance suites' requirement tables).
                cites = "Requirement:" in line or continued
                for token in set(TOKEN.findall(line)):
                    if token in found and (cites or '"%s"' % token in line):
                        found[token][line_column].append("%s:%d" % (rel, number))
                        # The process requirements (MODEL-*) are implemented by the model
                        # checker and the conformance harness themselves, the auditor
                        # tool's (AUD-*) by the harness's sources.
                        if (token.startswith("MODEL-") and rel.startswith(("conformance" + os.sep + "src", "model" + os.sep))) or (
                            token.startswith("AUD-") and rel.startswith("conformance" + os.sep + "src")
                        ):
                            found[token]["implemented"].append("%s:%d" % (rel, number))
                continued = cites and line.rstrip().endswith(",")
    return found


def refs(items):
    shown = ", ".join("`%s`" % r for r in items[:MAX_REFS])
    if len(items) > MAX_REFS:
        shown += " and %d more" % (len(items) - MAX_REFS)
    return shown


def render(reqs, found):
    out = []
    out.append("# Requirement traceability")
    out.append("")
    out.append("Generated by `scripts/traceability.py` from the citations of the ids of")
    out.append("[requirements.md](requirements.md) in the tree; do not edit by hand.")
    out.append("")
    total = len(reqs)
    counts = {c: sum(1 for r in reqs if found[r["id"]][c]) for c in ("modelled", "implemented", "tested")}
    out.append("| | requirements |")
    out.append("|---|---|")
    out.append("| listed | %d |" % total)
    for c in ("modelled", "implemented", "tested"):
        out.append("| %s | %d |" % (c, counts[c]))
    untested = [r["id"] for r in reqs if not found[r["id"]]["tested"]]
    out.append("")
    if untested:
        out.append("Without a test: " + ", ".join(untested) + ".")
    else:
        out.append("Every requirement has a test.")
    out.append("")
    out.append("| id | level | modelled | implemented | tested |")
    out.append("|---|---|---|---|---|")
    for r in reqs:
        f = found[r["id"]]
        cells = []
        for c in ("modelled", "implemented", "tested"):
            cells.append(("yes (%d)" % len(f[c])) if f[c] else "no")
        out.append("| %s | %s | %s |" % (r["id"], r["level"], " | ".join(cells)))
    out.append("")
    out.append("## References")
    out.append("")
    for r in reqs:
        f = found[r["id"]]
        out.append("### %s (%s)" % (r["id"], r["level"]))
        out.append("")
        out.append(r["text"])
        out.append("")
        for c in ("modelled", "implemented", "tested"):
            out.append("- %s: %s" % (c, refs(f[c]) if f[c] else "none"))
        out.append("")
    return "\n".join(out)


def shown(path):
    rel = os.path.relpath(os.path.abspath(path), ROOT)
    return os.path.abspath(path) if rel.startswith("..") else rel


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default=DEFAULT_OUTPUT, help="where to write the report")
    parser.add_argument("--strict", action="store_true", help="fail on a requirement without a test")
    args = parser.parse_args()

    reqs = read_requirements()
    if not reqs:
        print("traceability: no requirements found in %s" % REQUIREMENTS, file=sys.stderr)
        return 1
    ids = [r["id"] for r in reqs]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        print("traceability: duplicate ids: %s" % ", ".join(duplicates), file=sys.stderr)
        return 1
    found = scan(ids)
    with open(args.output, "w", encoding="utf-8") as f:
        f.write(render(reqs, found) + "\n")

    untested = [r["id"] for r in reqs if not found[r["id"]]["tested"]]
    unimplemented = [
        r["id"]
        for r in reqs
        if r["level"] == "MUST" and not found[r["id"]]["implemented"] and not found[r["id"]]["modelled"]
    ]
    counts = {c: sum(1 for i in ids if found[i][c]) for c in ("modelled", "implemented", "tested")}
    print(
        "traceability: %d requirements; modelled %d, implemented %d, tested %d; wrote %s"
        % (len(ids), counts["modelled"], counts["implemented"], counts["tested"], shown(args.output))
    )
    if untested:
        print("traceability: without a test: " + ", ".join(untested))
    if unimplemented:
        print("traceability: MUST requirements neither implemented nor modelled: " + ", ".join(unimplemented))
    if args.strict and (untested or unimplemented):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
