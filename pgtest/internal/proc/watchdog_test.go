package proc

import (
	"strings"
	"testing"
)

func TestParseWatch(t *testing.T) {
	tests := []struct {
		line              string
		kind, dir, binDir string
		wantErr           bool
	}{
		{`cluster "/tmp/a" "/usr/lib/postgresql/15/bin"`, KindCluster, "/tmp/a", "/usr/lib/postgresql/15/bin", false},
		{`ha "/tmp/x y \"z\"\n" "/b"`, KindHA, "/tmp/x y \"z\"\n", "/b", false},
		{`- "/tmp/a"`, "-", "/tmp/a", "", false},
		{`cluster /tmp/a /b`, "", "", "", true},
		{`cluster "/tmp/a"`, "", "", "", true},
		{`other "/tmp/a" "/b"`, "", "", "", true},
		{``, "", "", "", true},
	}
	for _, tt := range tests {
		kind, dir, binDir, err := parseWatch(tt.line)
		if (err != nil) != tt.wantErr || kind != tt.kind || dir != tt.dir || binDir != tt.binDir {
			t.Errorf("parseWatch(%q) = %q, %q, %q, %v; want %q, %q, %q, error %v",
				tt.line, kind, dir, binDir, err, tt.kind, tt.dir, tt.binDir, tt.wantErr)
		}
	}
	// What watch writes, parseWatch reads.
	for _, dir := range []string{"/tmp/plain", "/tmp/with space", "/tmp/quote\"", "/tmp/new\nline", "/tmp/é"} {
		line := watchLine(KindCluster, dir, "/bin dir")
		kind, gotDir, binDir, err := parseWatch(strings.TrimSuffix(line, "\n"))
		if err != nil || kind != KindCluster || gotDir != dir || binDir != "/bin dir" || strings.Count(line, "\n") != 1 {
			t.Errorf("watchLine(%q) = %q, read back as %q, %q, %q, %v", dir, line, kind, gotDir, binDir, err)
		}
	}
}
