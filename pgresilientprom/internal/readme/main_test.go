package main

import (
	"go/ast"
	"go/parser"
	"go/token"
	"testing"
)

// TestConnectorOfChecked: the README's snippet, main.go, checks the ok of
// pgresilient.ConnectorOf. A reader who adapts it to a pool that is not
// pgresilient's own (otelsql.Open's) must be stopped there: with ok
// ignored, the nil Connector reaches NewCollector.
func TestConnectorOfChecked(t *testing.T) {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "main.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	calls := 0
	checked := map[string]bool{} // the names ok is assigned to, and whether an if reads them
	ast.Inspect(f, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.AssignStmt:
			if len(n.Rhs) != 1 || !isConnectorOf(n.Rhs[0]) {
				return true
			}
			calls++
			if len(n.Lhs) != 2 {
				return true
			}
			if ok, isIdent := n.Lhs[1].(*ast.Ident); isIdent && ok.Name != "_" {
				if _, seen := checked[ok.Name]; !seen {
					checked[ok.Name] = false
				}
			} else {
				t.Errorf("%s: ConnectorOf's ok is discarded", fset.Position(n.Pos()))
			}
		case *ast.IfStmt:
			ast.Inspect(n.Cond, func(c ast.Node) bool {
				if id, isIdent := c.(*ast.Ident); isIdent {
					if _, known := checked[id.Name]; known {
						checked[id.Name] = true
					}
				}
				return true
			})
		}
		return true
	})
	if calls == 0 {
		t.Fatal("main.go does not call pgresilient.ConnectorOf")
	}
	for name, ok := range checked {
		if !ok {
			t.Errorf("no if statement reads %s, ConnectorOf's ok", name)
		}
	}
}

// isConnectorOf reports whether e is a call of pgresilient.ConnectorOf.
func isConnectorOf(e ast.Expr) bool {
	call, ok := e.(*ast.CallExpr)
	if !ok {
		return false
	}
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	pkg, ok := sel.X.(*ast.Ident)
	return ok && pkg.Name == "pgresilient" && sel.Sel.Name == "ConnectorOf"
}
