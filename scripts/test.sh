#!/usr/bin/env bash
# Set up everything and run the whole test suite: lint, format, types, and pytest including the
# libvirt lab, PostgreSQL, victoria-metrics and browser tests. Nothing may be skipped: with
# BALANCER_REQUIRE_LAB=1 and BALANCER_REQUIRE_SERVICES=1 a missing prerequisite fails its test,
# and a run that skips or collects no test fails.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --test

export BALANCER_REQUIRE_LAB=1 BALANCER_REQUIRE_SERVICES=1
export PYTHONDONTWRITEBYTECODE=1

echo "== ruff"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
echo "== mypy"
.venv/bin/mypy
echo "== pytest"
report=$(mktemp --suffix=.xml)
trap 'rm -f "$report"' EXIT
set +e
.venv/bin/pytest -p no:cacheprovider --junitxml="$report" "$@"
rc=$?
set -e
if [ "$rc" -eq 5 ]; then
  echo "test: pytest collected no test" >&2
  exit 1
fi
[ "$rc" -eq 0 ] || exit "$rc"
.venv/bin/python - "$report" <<'PY'
import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else list(root)
tests = sum(int(s.get("tests", 0)) for s in suites)
skipped = sum(int(s.get("skipped", 0)) for s in suites)
if tests == 0:
    sys.exit("test: no test ran")
if skipped:
    names = [c.get("classname", "") + "::" + c.get("name", "")
             for s in suites for c in s.iter("testcase") if c.find("skipped") is not None]
    sys.exit(f"test: {skipped} test(s) skipped; every test must run here:\n  " + "\n  ".join(names))
print(f"test: {tests} tests ran, none skipped")
PY
