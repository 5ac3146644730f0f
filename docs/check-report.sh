#!/usr/bin/env bash
# Checks that the demo's HTML report renders in a browser, and regenerates
# docs/demo-report.png, the screenshot shown in docs/demo.md.
#
#   docs/check-report.sh            # runs the demo (about a minute), then renders its report
#   docs/check-report.sh report.html  # renders an existing report
#
# Needs Chromium (Debian/Ubuntu: apt-get install chromium); the demo itself
# needs Go and the PostgreSQL server binaries. Nothing here uses the network:
# the report is self-contained, and Chromium runs with networking features off.
set -euo pipefail
cd "$(dirname "$0")/.."

chromium="$(command -v chromium || command -v chromium-browser || command -v google-chrome || true)"
if [ -z "$chromium" ]; then
	echo "check-report: Chromium not found (Debian/Ubuntu: apt-get install chromium)" >&2
	exit 1
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ $# -ge 1 ]; then
	report="$(realpath "$1")"
else
	report="$work/report.html"
	go run ./cmd/pgresilient-demo -report "$report"
fi

# The report must not refer to anything outside itself.
if grep -Eiq '(src|href)[[:space:]]*=[[:space:]]*["'"'"']?[[:space:]]*(https?:)?//|url\([[:space:]]*["'"'"']?(https?:)?//|@import|<link|<script' "$report"; then
	echo "check-report: $report refers to an external resource" >&2
	exit 1
fi

browse() {
	"$chromium" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
		--disable-background-networking --disable-component-update --disable-sync \
		--user-data-dir="$work/profile" --window-size=1280,2000 "$@" 2>"$work/chromium.log"
}

# The DOM Chromium built must hold both charts, each drawn with paths.
browse --dump-dom "file://$report" >"$work/dom.html"
svgs="$(grep -o '<svg' "$work/dom.html" | wc -l)"
paths="$(grep -o '<path' "$work/dom.html" | wc -l)"
if [ "$svgs" -ne 2 ] || [ "$paths" -lt 20 ]; then
	echo "check-report: the rendered page has $svgs charts and $paths paths, want 2 charts drawn" >&2
	exit 1
fi

browse --screenshot="$work/shot.png" "file://$report" >/dev/null
size="$(wc -c <"$work/shot.png")"
if [ "$size" -lt 50000 ]; then
	echo "check-report: the screenshot is only $size bytes: a blank page?" >&2
	exit 1
fi
cp "$work/shot.png" docs/demo-report.png
echo "check-report: $svgs charts rendered; screenshot written to docs/demo-report.png ($size bytes)"
