package conformance

import (
	"bytes"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"path"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"unicode"
	"unicode/utf8"
)

// The rewrite turns pgx's stdlib tests into tests of pgresilient by the changes
// a user makes when switching drivers, and no others:
//
//	sql.Open("pgx", dsn), sql.Open("pgx/v5", dsn)  ->  sql.Open("pgresilient", dsn)
//	stdlib.OpenDB(config, opts...)                 ->  pgresilientOpenDB(t, config, opts...)
//	                                                   (NewConnectorConfig, then sql.OpenDB: helperSource)
//	stdlib.OptionOpenDB                            ->  pgresilient.Option
//	stdlib.OptionBeforeConnect, OptionAfterConnect ->  pgresilient.WithBeforeConnect, WithAfterConnect
//	c := driverConn.(*stdlib.Conn).Conn()          ->  c, pgxErr := pgresilient.PgxConn(driverConn); if pgxErr != nil { return pgxErr }
//
// Test functions named in notApplicable are dropped, their lines left blank,
// and imports only they used become blank imports. Any other use of package
// stdlib left in the code that runs is an error naming its line: a new pgx
// test needs a rule here or an entry in notApplicable, never a silent pass
// through pgx's own driver.
//
// Every replacement stays on its line, so a failure's file:line is the line
// of pgx's file, and the rest of the text (comments included) is untouched.

const (
	stdlibPath      = "github.com/jackc/pgx/v5/stdlib"
	pgresilientPath = "github.com/pgresilient/pgresilient"
)

// stdlibRenames maps the stdlib names that pgresilient spells differently.
var stdlibRenames = map[string]string{
	"OptionOpenDB":        "pgresilient.Option",
	"OptionBeforeConnect": "pgresilient.WithBeforeConnect",
	"OptionAfterConnect":  "pgresilient.WithAfterConnect",
}

// pgxDriverNames are the names pgx registers with database/sql.
var pgxDriverNames = map[string]bool{`"pgx"`: true, `"pgx/v5"`: true}

// helperSource is the file the rewrite adds beside pgx's: what a user writes
// instead of stdlib.OpenDB.
const helperSource = `package stdlib_test

import (
	"database/sql"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/stretchr/testify/require"

	"github.com/pgresilient/pgresilient"
)

// pgresilientOpenDB replaces stdlib.OpenDB(config, opts...): the Config is
// pgx's parsed one, every pgresilient setting at its default.
func pgresilientOpenDB(t testing.TB, config pgx.ConnConfig, opts ...pgresilient.Option) *sql.DB {
	t.Helper()
	c, err := pgresilient.NewConnectorConfig(pgresilient.Config{ConnConfig: &config}, opts...)
	require.NoError(t, err)
	return sql.OpenDB(c)
}
`

// packageSource makes the directory a package of its own; the tests are
// package stdlib_test, as in pgx.
const packageSource = `// Package stdlib holds pgx's database/sql tests, rewritten at test time to
// use pgresilient (github.com/pgresilient/pgresilient/conformance).
package stdlib
`

// rewritten is one of pgx's test files after the rewrite.
type rewritten struct {
	Src   []byte
	Tests []string // its top-level Test functions, not-applicable ones included
}

type edit struct {
	start, end int // byte offsets in the original source
	text       string
}

// rewriteFile rewrites src, one of pgx's stdlib test files named name. skip
// holds the names of the test functions to leave alone.
func rewriteFile(name string, src []byte, skip map[string]bool) (*rewritten, error) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, name, src, parser.ParseComments|parser.SkipObjectResolution)
	if err != nil {
		return nil, err
	}
	off := func(p token.Pos) int { return fset.Position(p).Offset }
	text := func(n ast.Node) string { return string(src[off(n.Pos()):off(n.End())]) }

	stdlibName, _ := importName(f, stdlibPath)
	if stdlibName == "" {
		return nil, fmt.Errorf("%s: does not import %s", name, stdlibPath)
	}
	isStdlib := func(n ast.Node, sel string) bool { return selectorOn(n, stdlibName, sel) }
	// connCall reports whether e is x.(*stdlib.Conn).Conn() and returns x.
	connCall := func(e ast.Expr) (ast.Expr, bool) {
		call, ok := e.(*ast.CallExpr)
		if !ok || len(call.Args) != 0 {
			return nil, false
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok || sel.Sel.Name != "Conn" {
			return nil, false
		}
		ta, ok := sel.X.(*ast.TypeAssertExpr)
		if !ok {
			return nil, false
		}
		star, ok := ta.Type.(*ast.StarExpr)
		if !ok || !isStdlib(star.X, "Conn") {
			return nil, false
		}
		return ta.X, true
	}

	var (
		edits          []edit
		problems       []string
		usePgresilient bool
		out            rewritten
	)
	where := func(n ast.Node) string {
		p := fset.Position(n.Pos())
		return fmt.Sprintf("%s:%d", path.Base(p.Filename), p.Line)
	}
	var visit func(n ast.Node) bool
	visit = func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.AssignStmt:
			if len(n.Lhs) != 1 || len(n.Rhs) != 1 {
				return true
			}
			x, ok := connCall(n.Rhs[0])
			if !ok {
				return true
			}
			lhs := text(n.Lhs[0])
			var s string
			switch n.Tok {
			case token.DEFINE:
				s = fmt.Sprintf("%s, pgxErr := pgresilient.PgxConn(%s); if pgxErr != nil { return pgxErr }", lhs, text(x))
			case token.ASSIGN:
				s = fmt.Sprintf("var pgxErr error; %s, pgxErr = pgresilient.PgxConn(%s); if pgxErr != nil { return pgxErr }", lhs, text(x))
			default:
				return true
			}
			edits = append(edits, edit{off(n.Pos()), off(n.End()), s})
			usePgresilient = true
			return false
		case *ast.CallExpr:
			if !isStdlib(n.Fun, "OpenDB") {
				return true
			}
			edits = append(edits, edit{off(n.Fun.Pos()), off(n.Lparen) + 1, "pgresilientOpenDB(t, "})
			for _, a := range n.Args {
				ast.Inspect(a, visit)
			}
			return false
		case *ast.SelectorExpr:
			if !isStdlib(n, "") {
				return true
			}
			to, ok := stdlibRenames[n.Sel.Name]
			if !ok {
				problems = append(problems, fmt.Sprintf("%s: %s.%s has no rewrite rule", where(n), stdlibName, n.Sel.Name))
				return false
			}
			edits = append(edits, edit{off(n.Pos()), off(n.End()), to})
			usePgresilient = true
			return false
		case *ast.BasicLit:
			if n.Kind == token.STRING && pgxDriverNames[n.Value] {
				edits = append(edits, edit{off(n.Pos()), off(n.End()), strconv.Quote("pgresilient")})
			}
		}
		return true
	}

	used := map[string]bool{} // package names the kept code refers to
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil && isTestFunc(fd) {
			out.Tests = append(out.Tests, fd.Name.Name)
			if skip[fd.Name.Name] {
				// Dropped, its lines left blank: its code may call the
				// helpers the rewrite changed.
				drop := fmt.Sprintf("// %s: not applicable to pgresilient (conformance's notApplicable)", fd.Name.Name)
				drop += strings.Repeat("\n", strings.Count(text(fd), "\n"))
				edits = append(edits, edit{off(fd.Pos()), off(fd.End()), drop})
				continue
			}
		}
		if gd, ok := d.(*ast.GenDecl); ok && gd.Tok == token.IMPORT {
			continue
		}
		ast.Inspect(d, visit)
		ast.Inspect(d, func(n ast.Node) bool {
			if s, ok := n.(*ast.SelectorExpr); ok {
				if x, ok := s.X.(*ast.Ident); ok {
					used[x.Name] = true
				}
			}
			return true
		})
	}
	if len(problems) > 0 {
		return nil, fmt.Errorf("%s: pgx's test uses what the rewrite does not handle (add a rule, or the test to notApplicable):\n\t%s",
			name, strings.Join(problems, "\n\t"))
	}

	// Imports: pgresilient when used. Those the kept code no longer refers
	// to become blank imports: stdlib always (every use was rewritten; it
	// still registers "pgx", which nothing that runs opens), others when
	// only dropped tests used them.
	if usePgresilient {
		if n, _ := importName(f, pgresilientPath); n == "" {
			imp := firstImportDecl(f)
			if imp == nil || !imp.Lparen.IsValid() {
				return nil, fmt.Errorf("%s: no import block to add %s to", name, pgresilientPath)
			}
			at := off(imp.Lparen) + 1
			edits = append(edits, edit{at, at, fmt.Sprintf(" %q;", pgresilientPath)})
		}
	}
	for _, spec := range f.Imports {
		n, _ := importName(f, mustUnquote(spec.Path.Value))
		if n == "_" || n == "." || (used[n] && n != stdlibName) {
			continue
		}
		if spec.Name != nil {
			edits = append(edits, edit{off(spec.Name.Pos()), off(spec.Name.End()), "_"})
		} else {
			at := off(spec.Path.Pos())
			edits = append(edits, edit{at, at, "_ "})
		}
	}

	out.Src, err = applyEdits(src, edits)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if _, err := parser.ParseFile(token.NewFileSet(), name, out.Src, parser.SkipObjectResolution); err != nil {
		return nil, fmt.Errorf("%s: the rewritten file does not parse: %w", name, err)
	}
	if bytes.Count(out.Src, []byte("\n")) != bytes.Count(src, []byte("\n")) {
		return nil, fmt.Errorf("%s: the rewrite changed the number of lines", name)
	}
	return &out, nil
}

// selectorOn reports whether n is pkg.sel, or any pkg.X when sel is "".
func selectorOn(n ast.Node, pkg, sel string) bool {
	s, ok := n.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	x, ok := s.X.(*ast.Ident)
	return ok && x.Name == pkg && (sel == "" || s.Sel.Name == sel)
}

// isTestFunc reports whether fd is a top-level test: TestXxx(t *testing.T).
func isTestFunc(fd *ast.FuncDecl) bool {
	name := fd.Name.Name
	if !strings.HasPrefix(name, "Test") || name == "TestMain" {
		return false
	}
	if r, _ := utf8.DecodeRuneInString(name[len("Test"):]); unicode.IsLower(r) {
		return false
	}
	return fd.Type.Params != nil && len(fd.Type.Params.List) == 1
}

func mustUnquote(s string) string {
	u, err := strconv.Unquote(s)
	if err != nil {
		panic(err)
	}
	return u
}

// importName returns the name under which f imports path ("" if it does not),
// and its import spec.
func importName(f *ast.File, importPath string) (string, *ast.ImportSpec) {
	for _, s := range f.Imports {
		p, err := strconv.Unquote(s.Path.Value)
		if err != nil || p != importPath {
			continue
		}
		if s.Name != nil {
			return s.Name.Name, s
		}
		return defaultImportName(p), s
	}
	return "", nil
}

var majorVersion = regexp.MustCompile(`^v[0-9]+$`)

// defaultImportName is the package name an unnamed import of p has, when the
// package is named after its directory, as every package pgx's tests import
// is (a wrong guess fails the inner build): the last element, or the one
// before a major version suffix (github.com/jackc/pgx/v5 is pgx).
func defaultImportName(p string) string {
	dir, base := path.Split(p)
	if majorVersion.MatchString(base) && dir != "" {
		return path.Base(dir)
	}
	return base
}

func firstImportDecl(f *ast.File) *ast.GenDecl {
	for _, d := range f.Decls {
		if gd, ok := d.(*ast.GenDecl); ok && gd.Tok == token.IMPORT {
			return gd
		}
	}
	return nil
}

// applyEdits applies non-overlapping edits to src.
func applyEdits(src []byte, edits []edit) ([]byte, error) {
	slices.SortFunc(edits, func(a, b edit) int { return a.start - b.start })
	var b bytes.Buffer
	last := 0
	for _, e := range edits {
		if e.start < last {
			return nil, fmt.Errorf("overlapping rewrites at byte %d", e.start)
		}
		if strings.Count(e.text, "\n") != bytes.Count(src[e.start:e.end], []byte("\n")) {
			return nil, fmt.Errorf("a rewrite at byte %d changes the number of lines", e.start)
		}
		b.Write(src[last:e.start])
		b.WriteString(e.text)
		last = e.end
	}
	b.Write(src[last:])
	return b.Bytes(), nil
}

// TestRewrite checks each rule on a file written for it: the text it gives,
// the lines it keeps, a dropped test and its import, and the error for a use
// of stdlib that no rule covers.
func TestRewrite(t *testing.T) {
	const src = `package stdlib_test

import (
	"database/sql"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
)

func open(t *testing.T, opts ...stdlib.OptionOpenDB) *sql.DB {
	cfg, _ := pgx.ParseConfig("")
	return stdlib.OpenDB(*cfg, append(opts, stdlib.OptionBeforeConnect(nil), stdlib.OptionAfterConnect(nil))...)
}

func TestKept(t *testing.T) {
	db, _ := sql.Open("pgx", "")
	db, _ = sql.Open("pgx/v5", "pgx")
	c, _ := db.Conn(nil)
	var p *pgx.Conn
	c.Raw(func(dc any) error {
		p = dc.(*stdlib.Conn).Conn()
		q := dc.(*stdlib.Conn).Conn() // the pgx.Conn
		_ = q
		return nil
	})
}

// TestDropped is not applicable.
func TestDropped(t *testing.T) {
	pool, _ := pgxpool.New(nil, "")
	stdlib.OpenDBFromPool(pool)
}
`
	const want = `package stdlib_test

import ( "github.com/pgresilient/pgresilient";
	"database/sql"
	"testing"

	"github.com/jackc/pgx/v5"
	_ "github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib"
)

func open(t *testing.T, opts ...pgresilient.Option) *sql.DB {
	cfg, _ := pgx.ParseConfig("")
	return pgresilientOpenDB(t, *cfg, append(opts, pgresilient.WithBeforeConnect(nil), pgresilient.WithAfterConnect(nil))...)
}

func TestKept(t *testing.T) {
	db, _ := sql.Open("pgresilient", "")
	db, _ = sql.Open("pgresilient", "pgresilient")
	c, _ := db.Conn(nil)
	var p *pgx.Conn
	c.Raw(func(dc any) error {
		var pgxErr error; p, pgxErr = pgresilient.PgxConn(dc); if pgxErr != nil { return pgxErr }
		q, pgxErr := pgresilient.PgxConn(dc); if pgxErr != nil { return pgxErr } // the pgx.Conn
		_ = q
		return nil
	})
}

// TestDropped is not applicable.
// TestDropped: not applicable to pgresilient (conformance's notApplicable)



`
	rw, err := rewriteFile("x_test.go", []byte(src), map[string]bool{"TestDropped": true})
	if err != nil {
		t.Fatal(err)
	}
	if got := string(rw.Src); got != want {
		t.Errorf("rewritten:\n%s\nwant:\n%s", got, want)
	}
	if !slices.Equal(rw.Tests, []string{"TestKept", "TestDropped"}) {
		t.Errorf("tests %q, want TestKept and TestDropped", rw.Tests)
	}

	unknown := strings.Replace(src, "_ = q", "_ = stdlib.GetDefaultDriver()", 1)
	_, err = rewriteFile("x_test.go", []byte(unknown), nil)
	if err == nil || !strings.Contains(err.Error(), "x_test.go:25: stdlib.GetDefaultDriver has no rewrite rule") {
		t.Errorf("stdlib.GetDefaultDriver in a test that runs: error %v, want one naming it and its line", err)
	}
	_, err = rewriteFile("x_test.go", []byte(unknown), map[string]bool{"TestKept": true, "TestDropped": true})
	if err != nil {
		t.Errorf("stdlib.GetDefaultDriver in a dropped test: %v", err)
	}
}

func TestIsTestFunc(t *testing.T) {
	for src, want := range map[string]bool{
		"func TestX(t *testing.T) {}":      true,
		"func Test(t *testing.T) {}":       true,
		"func Test_x(t *testing.T) {}":     true,
		"func Test1(t *testing.T) {}":      true,
		"func Testx(t *testing.T) {}":      false,
		"func TestMain(m *testing.M) {}":   false,
		"func TestX() {}":                  false,
		"func helper(t *testing.T) {}":     false,
		"func BenchmarkX(b *testing.B) {}": false,
	} {
		f, err := parser.ParseFile(token.NewFileSet(), "x.go", "package x\n"+src, 0)
		if err != nil {
			t.Fatal(err)
		}
		if got := isTestFunc(f.Decls[0].(*ast.FuncDecl)); got != want {
			t.Errorf("isTestFunc(%s) = %v, want %v", src, got, want)
		}
	}
}
