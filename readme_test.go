package pgresilient

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"regexp"
	"strings"
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

// TestReadmeErrorSwitch: the README's first example switches on every
// sentinel error the package exports, so a newcomer who copies it handles
// each thing pgresilient can tell them (a new sentinel fails this test until
// the README says what to do with it).
func TestReadmeErrorSwitch(t *testing.T) {
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	var sentinels []string
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), name, nil, parser.SkipObjectResolution)
		if err != nil {
			t.Fatal(err)
		}
		for _, d := range f.Decls {
			gd, ok := d.(*ast.GenDecl)
			if !ok || gd.Tok != token.VAR {
				continue
			}
			for _, spec := range gd.Specs {
				for _, n := range spec.(*ast.ValueSpec).Names {
					if strings.HasPrefix(n.Name, "Err") && n.IsExported() {
						sentinels = append(sentinels, n.Name)
					}
				}
			}
		}
	}
	if len(sentinels) < 4 {
		t.Fatalf("found the sentinels %v: fewer than the package has", sentinels)
	}
	quickstart, err := os.ReadFile(readmeSources[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range sentinels {
		if !strings.Contains(string(quickstart), "case errors.Is(err, pgresilient."+s+"): //") {
			t.Errorf("the README's error switch (%s) has no commented case for pgresilient.%s", readmeSources[0], s)
		}
	}
}
