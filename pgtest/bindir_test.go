package pgtest

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestBinDir(t *testing.T) {
	found, err := BinDir()
	if err != nil {
		if SkipRequested() {
			t.Skip(SkipEnv + "=1")
		}
		t.Fatal(err)
	}
	t.Logf("found %s", found)

	empty := t.TempDir()
	tests := []struct {
		name    string
		env     string
		want    string // directory, or "" for ErrNotFound
		wantMsg []string
	}{
		{name: "env names the real directory", env: found, want: found},
		{
			name:    "env names a directory without them",
			env:     empty,
			wantMsg: []string{empty, "apt-get install postgresql", "brew install postgresql", BinDirEnv, SkipEnv + "=1"},
		},
		{
			name:    "env names a missing directory",
			env:     filepath.Join(empty, "nope"),
			wantMsg: []string{"apt-get install postgresql"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(BinDirEnv, tt.env)
			got, err := BinDir()
			if tt.want != "" {
				if err != nil || got != tt.want {
					t.Fatalf("BinDir() = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			if !errors.Is(err, ErrNotFound) {
				t.Fatalf("BinDir() = %q, %v; want ErrNotFound", got, err)
			}
			for _, s := range tt.wantMsg {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q lacks %q", err, s)
				}
			}
		})
	}
}

func TestBinDirSearchOrder(t *testing.T) {
	root := t.TempDir()
	for _, v := range []string{"9.6", "15", "12", "notaversion"} {
		if err := os.MkdirAll(filepath.Join(root, v, "bin"), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	got := debianBinDirs(root)
	want := []string{
		filepath.Join(root, "15", "bin"),
		filepath.Join(root, "12", "bin"),
		filepath.Join(root, "9.6", "bin"),
	}
	if strings.Join(got, ",") != strings.Join(want, ",") {
		t.Errorf("debianBinDirs = %q, want %q", got, want)
	}
}

func TestStartWithoutBinaries(t *testing.T) {
	t.Setenv(BinDirEnv, t.TempDir())
	c, err := Start(t.Context())
	if !errors.Is(err, ErrNotFound) || c != nil {
		t.Fatalf("Start = %v, %v; want nil, ErrNotFound", c, err)
	}
}
