package store

import (
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"path/filepath"
	"strings"
	"testing"
	"unicode"
)

// sqlMethods are the pgx calls that take SQL text, and which argument it
// is (after the context; pgx.Batch's Queue has none).
var sqlMethods = map[string]int{"Exec": 1, "Query": 1, "QueryRow": 1, "Queue": 0}

// unsafeSQL reports the calls in file whose SQL text is built from
// anything but string literals, constants (exported ones, and those of
// consts, the package's own) and identifiers quoted by
// pgx.Identifier{...}.Sanitize(): values must travel as parameters ($1,
// $2, ...), never in the text.
func unsafeSQL(fset *token.FileSet, file *ast.File, consts map[string]bool) []string {
	var out []string
	ast.Inspect(file, func(n ast.Node) bool {
		call, ok := n.(*ast.CallExpr)
		if !ok {
			return true
		}
		sel, ok := call.Fun.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		arg, ok := sqlMethods[sel.Sel.Name]
		if !ok || len(call.Args) <= arg {
			return true
		}
		if !safeSQLText(call.Args[arg], consts) {
			out = append(out, fset.Position(call.Pos()).String())
		}
		return true
	})
	return out
}

// safeSQLText is a whole SQL argument: a name (a named query or an
// exported constant) or what a concatenated text may be made of.
func safeSQLText(e ast.Expr, consts map[string]bool) bool {
	switch e := e.(type) {
	case *ast.Ident, *ast.SelectorExpr:
		return true
	case *ast.ParenExpr:
		return safeSQLText(e.X, consts)
	case *ast.CallExpr:
		return false // a quoted identifier alone is no SQL text
	}
	return safeSQLPart(e, consts)
}

// safeSQLPart is a piece of a concatenated SQL text.
func safeSQLPart(e ast.Expr, consts map[string]bool) bool {
	switch e := e.(type) {
	case *ast.BasicLit:
		return e.Kind == token.STRING
	case *ast.ParenExpr:
		return safeSQLPart(e.X, consts)
	case *ast.Ident:
		return consts[e.Name] || unicode.IsUpper([]rune(e.Name)[0])
	case *ast.SelectorExpr:
		return unicode.IsUpper([]rune(e.Sel.Name)[0])
	case *ast.BinaryExpr:
		return e.Op == token.ADD && safeSQLPart(e.X, consts) && safeSQLPart(e.Y, consts)
	case *ast.CallExpr:
		// pgx.Identifier{...}.Sanitize()
		sel, ok := e.Fun.(*ast.SelectorExpr)
		if !ok || sel.Sel.Name != "Sanitize" {
			return false
		}
		lit, ok := sel.X.(*ast.CompositeLit)
		if !ok {
			return false
		}
		typ, ok := lit.Type.(*ast.SelectorExpr)
		return ok && typ.Sel.Name == "Identifier"
	}
	return false
}

// TestSQLIsParameterized reads every Go file of the module: no SQL text is
// built from values (fmt.Sprintf, a concatenated variable).
func TestSQLIsParameterized(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	byDir := map[string][]*ast.File{}
	files := 0
	err = filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if name := d.Name(); p != root && (strings.HasPrefix(name, ".") || name == "bin" || name == "testdata" || name == "node_modules") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") {
			return nil
		}
		f, err := parser.ParseFile(fset, p, nil, 0)
		if err != nil {
			return err
		}
		files++
		byDir[filepath.Dir(p)] = append(byDir[filepath.Dir(p)], f)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	var bad []string
	for _, group := range byDir {
		consts := map[string]bool{}
		for _, f := range group {
			for _, d := range f.Decls {
				if g, ok := d.(*ast.GenDecl); ok && g.Tok == token.CONST {
					for _, spec := range g.Specs {
						for _, n := range spec.(*ast.ValueSpec).Names {
							consts[n.Name] = true
						}
					}
				}
			}
		}
		for _, f := range group {
			bad = append(bad, unsafeSQL(fset, f, consts)...)
		}
	}
	if files < 100 {
		t.Fatalf("read %d Go files under %s: not the module", files, root)
	}
	for _, b := range bad {
		t.Errorf("%s: SQL text built from a value; pass it as a parameter ($n) or quote an identifier with pgx.Identifier{...}.Sanitize()", b)
	}
}

// TestUnsafeSQLIsCaught: the check finds what it is for.
func TestUnsafeSQLIsCaught(t *testing.T) {
	src := `package p
func f() {
	pool.Exec(ctx, fmt.Sprintf("DELETE FROM t WHERE id = '%s'", id))
	pool.QueryRow(ctx, "SELECT * FROM t WHERE name = '"+name+"'")
	conn.Exec(ctx, "CREATE DATABASE "+name)
	pool.Query(ctx, strings.Join(parts, " "))
	batch.Queue(fmt.Sprintf("UPDATE t SET n = %d", n))
	pool.Exec(ctx, "DELETE FROM t WHERE id = $1", id)
	pool.Exec(ctx, query, id)
	pool.QueryRow(ctx, "SELECT "+columns+" FROM t WHERE id = $1", id)
	conn.Exec(ctx, "LISTEN "+NotifyChannel)
	conn.Exec(ctx, "DROP DATABASE "+pgx.Identifier{name}.Sanitize()+" WITH (FORCE)")
}`
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "p.go", src, 0)
	if err != nil {
		t.Fatal(err)
	}
	got := unsafeSQL(fset, f, map[string]bool{"columns": true})
	if len(got) != 5 {
		t.Fatalf("found %d unsafe calls, want the first 5: %v", len(got), got)
	}
	for i, line := range []string{":3:", ":4:", ":5:", ":6:", ":7:"} {
		if !strings.Contains(got[i], line) {
			t.Errorf("finding %d at %s, want line %s", i, got[i], line)
		}
	}
}
