#!/usr/bin/env python3
"""Prints the ninja targets that the tests of some suites need.

    scripts/test-targets.py BUILD-DIR [--suite S]... [--no-suite S]...

A configured meson build directory is enough; nothing needs to be built
yet. A test is selected as `meson test` would select it: it is in one of
the --suite suites (every test when none is given) and in none of the
--no-suite ones. The output is one line of paths relative to BUILD-DIR,
for `ninja -C BUILD-DIR $(...)`, so that a build can compile only what
its test run uses and then run `meson test --no-rebuild`.
"""
import argparse
import json
import os
import subprocess
import sys


def introspect(build: str, what: str) -> list:
    out = subprocess.run(["meson", "introspect", what, build], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def suite_names(test: dict) -> set:
    # Suites come as "project:suite"; meson's --suite takes either form.
    names = set()
    for s in test["suite"]:
        names.add(s)
        names.add(s.split(":", 1)[-1])
    return names


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("build")
    ap.add_argument("--suite", action="append", default=[])
    ap.add_argument("--no-suite", action="append", default=[])
    args = ap.parse_args()

    build = os.path.abspath(args.build)
    files = {}
    for t in introspect(build, "--targets"):
        files[t["id"]] = t["filename"]

    wanted = set()
    for test in introspect(build, "--tests"):
        names = suite_names(test)
        if args.suite and not names & set(args.suite):
            continue
        if names & set(args.no_suite):
            continue
        for dep in test.get("depends", []):
            for f in files.get(dep, []):
                wanted.add(os.path.relpath(f, build))
    if not wanted:
        print("test-targets.py: no test matches", file=sys.stderr)
        return 1
    print(" ".join(sorted(wanted)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
