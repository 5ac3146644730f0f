package pgresilient

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"go/importer"
	"go/token"
	"go/types"
	"reflect"
	"sort"
	"strings"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/ngrok/sqlmw"
)

// driverInterfaces returns every interface that database/sql/driver declares
// for the Go release running the test, each as its methods' signatures
// ("NextRow func() error"), type-checked from the standard library's source
// with the release's build constraints: a new Go release's new interface
// joins the check by itself, with nobody listing it.
func driverInterfaces(t *testing.T) map[string][]string {
	t.Helper()
	pkg, err := importer.ForCompiler(token.NewFileSet(), "source", nil).Import("database/sql/driver")
	if err != nil {
		t.Fatalf("type-check database/sql/driver from source: %v", err)
	}
	qual := func(p *types.Package) string { return p.Name() }
	ifaces := map[string][]string{}
	for _, name := range pkg.Scope().Names() {
		tn, ok := pkg.Scope().Lookup(name).(*types.TypeName)
		if !ok || !tn.Exported() {
			continue
		}
		it, ok := tn.Type().Underlying().(*types.Interface)
		if !ok || it.NumMethods() == 0 {
			continue
		}
		var ms []string
		for i := range it.NumMethods() {
			m := it.Method(i)
			ms = append(ms, m.Name()+" "+signature(m.Type().(*types.Signature), qual))
		}
		ifaces[name] = ms
	}
	return ifaces
}

// signature writes sig as reflect writes a method value's type:
// "func(string, []driver.Value) (driver.Result, error)".
func signature(sig *types.Signature, qual types.Qualifier) string {
	list := func(tu *types.Tuple, variadic bool) []string {
		var out []string
		for i := range tu.Len() {
			typ := tu.At(i).Type()
			if variadic && i == tu.Len()-1 {
				out = append(out, "..."+types.TypeString(typ.(*types.Slice).Elem(), qual))
				continue
			}
			out = append(out, types.TypeString(typ, qual))
		}
		return out
	}
	s := "func(" + strings.Join(list(sig.Params(), sig.Variadic()), ", ") + ")"
	switch res := list(sig.Results(), false); len(res) {
	case 0:
	case 1:
		s += " " + res[0]
	default:
		s += " (" + strings.Join(res, ", ") + ")"
	}
	return strings.ReplaceAll(s, "any", "interface {}")
}

// implements reports whether v has every method of ms, with its signature.
func implements(v any, ms []string) bool {
	rv := reflect.ValueOf(v)
	for _, m := range ms {
		name, sig, _ := strings.Cut(m, " ")
		mv := rv.MethodByName(name)
		if !mv.IsValid() || mv.Type().String() != sig {
			return false
		}
	}
	return true
}

// parityPair is one of pgx's stdlib values and pgresilient's in its place.
type parityPair struct {
	what      string
	pgx, ours any
}

// parityPairs opens one of each of the values database/sql receives from a
// driver (driver, connector, conn, stmt, rows, tx, result), through raw pgx
// stdlib and through db.
func parityPairs(t *testing.T, db *sql.DB, cn *Connector) []parityPair {
	t.Helper()
	ctx := context.Background()
	c := needCluster(t)
	cfg, err := pgx.ParseConfig(c.DSN())
	if err != nil {
		t.Fatal(err)
	}
	raw := openDB(t, "pgx", c.DSN())
	pairs := []parityPair{
		{"driver", stdlib.GetDefaultDriver(), cn.Driver()},
		{"connector", stdlib.GetConnector(*cfg), driver.Connector(cn)},
	}
	perConn := func(db *sql.DB) (vals []any) {
		sc, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer sc.Close()
		err = sc.Raw(func(dc any) error {
			c := dc.(driver.Conn)
			vals = append(vals, c)
			st, err := c.(driver.ConnPrepareContext).PrepareContext(ctx, "select 1")
			if err != nil {
				return err
			}
			vals = append(vals, st)
			if err := st.Close(); err != nil {
				return err
			}
			rows, err := c.(driver.QueryerContext).QueryContext(ctx, "select 1", nil)
			if err != nil {
				return err
			}
			vals = append(vals, rows)
			if err := rows.Close(); err != nil {
				return err
			}
			res, err := c.(driver.ExecerContext).ExecContext(ctx, "select 1", nil)
			if err != nil {
				return err
			}
			vals = append(vals, res)
			tx, err := c.(driver.ConnBeginTx).BeginTx(ctx, driver.TxOptions{})
			if err != nil {
				return err
			}
			vals = append(vals, tx)
			return tx.Rollback()
		})
		if err != nil {
			t.Fatal(err)
		}
		return vals
	}
	theirs, ours := perConn(raw), perConn(db)
	for i, what := range []string{"conn", "stmt", "rows", "result", "tx"} {
		pairs = append(pairs, parityPair{what, theirs[i], ours[i]})
	}
	return pairs
}

// TestInterfaceParity: every interface of database/sql/driver that a value of
// pgx's stdlib driver implements, pgresilient's value in its place implements
// too, so that database/sql treats both alike (Go 1.27's RowsColumnScanner,
// for one, changes how Scan converts). The interfaces are read from the
// running Go release's source, not listed here.
func TestInterfaceParity(t *testing.T) {
	ifaces := driverInterfaces(t)
	if len(ifaces) < 25 {
		t.Fatalf("found %d interfaces in database/sql/driver; Go 1.25 alone has 29", len(ifaces))
	}
	names := make([]string, 0, len(ifaces))
	for n := range ifaces {
		names = append(names, n)
	}
	sort.Strings(names)

	for _, mode := range []struct {
		name string
		opts []Option
	}{
		{"plain", nil},
		{"interceptor", []Option{WithInterceptor(sqlmw.NullInterceptor{})}},
	} {
		t.Run(mode.name, func(t *testing.T) {
			cn, err := NewConnector(needCluster(t).DSN(), mode.opts...)
			if err != nil {
				t.Fatal(err)
			}
			db := openDBConnector(t, cn)
			checked := 0
			for _, p := range parityPairs(t, db, cn) {
				var theirs []string
				for _, n := range names {
					if !implements(p.pgx, ifaces[n]) {
						continue
					}
					theirs = append(theirs, n)
					checked++
					if !implements(p.ours, ifaces[n]) {
						t.Errorf("%s: pgx's %T implements driver.%s, pgresilient's %T does not", p.what, p.pgx, n, p.ours)
					}
				}
				t.Logf("%s: pgx's %T implements %v", p.what, p.pgx, theirs)
			}
			// pgx v5.12 on Go 1.25: 21 (conn 9, stmt 5, rows 5, driver 2,
			// connector, result and tx 1 each, counting the base ones).
			if checked < 20 {
				t.Errorf("pgx's values implement %d interfaces in all: too few for the check to mean anything", checked)
			}
		})
	}
}
