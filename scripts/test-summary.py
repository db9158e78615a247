#!/usr/bin/env python3
"""Summarises meson test logs from several build directories.

Prints every failed or skipped test, then one closing line
"tests: N passed, N failed, N skipped". Exits 1 when a test failed, or when
CI is set and a test was skipped whose name does not contain one of the
comma-separated words in RBDCACHE_ALLOWED_SKIPS.
"""
import json
import os
import sys


def main() -> int:
    passed = failed = skipped = 0
    bad_skips = []
    allowed = [w for w in os.environ.get("RBDCACHE_ALLOWED_SKIPS", "").split(",") if w]
    for build in sys.argv[1:]:
        for logname in ("testlog.json", "benchlog.json"):
            path = os.path.join(build, "meson-logs", logname)
            if not os.path.exists(path):
                continue
            with open(path) as f:
                for line in f:
                    if not line.strip():
                        continue
                    t = json.loads(line)
                    name = f"{build}:{t['name']}"
                    result = t["result"]
                    if result in ("OK", "EXPECTEDFAIL"):
                        passed += 1
                    elif result == "SKIP":
                        skipped += 1
                        print(f"SKIPPED {name}")
                        if not any(w in t["name"] for w in allowed):
                            bad_skips.append(name)
                    else:
                        failed += 1
                        print(f"FAILED  {name} ({result})")
    print(f"tests: {passed} passed, {failed} failed, {skipped} skipped")
    if failed:
        return 1
    if os.environ.get("CI") and bad_skips:
        print("in CI every tool is installed, so these must not skip: " + ", ".join(bad_skips))
        return 1
    if passed == 0:
        print("no test ran")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
