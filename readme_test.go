package pgresilient

import (
	"os"
	"regexp"
	"testing"
)

// readmeSources are the files whose whole text the README's Go snippets
// show. They are built and vetted with their modules (the sqlmock recipe
// also runs as a test), so a README snippet that matches one compiles.
var readmeSources = []string{
	"internal/readme/quickstart/main.go",
	"internal/readme/sqlmockrecipe/recipe_test.go",
	"pgresilientprom/internal/readme/main.go",
}

// TestReadmeSnippets fails when a Go snippet of README.md is not, byte for
// byte, one of readmeSources.
func TestReadmeSnippets(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	sources := map[string]string{}
	for _, path := range readmeSources {
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		sources[string(b)] = path
	}
	snippets := regexp.MustCompile("(?s)```go\n(.*?)```").FindAllStringSubmatch(string(readme), -1)
	if len(snippets) == 0 {
		t.Fatal("README.md has no Go snippet")
	}
	for i, s := range snippets {
		if _, ok := sources[s[1]]; !ok {
			t.Errorf("README.md's Go snippet %d is not the text of any of %q: a snippet must be a file that compiles", i+1, readmeSources)
		}
	}
}
