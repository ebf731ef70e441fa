package migrations_test

import (
	"go/scanner"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/groundmesh/groundmesh/migrations"
)

// owners maps each migration number range to the owner of the tables its
// files create (the ranges of the package doc).
var owners = []struct {
	below int
	owner string
}{
	{10, "platform"}, {20, "ingest"}, {30, "synth"}, {40, "train"}, {50, "eval"}, {60, "ground"},
}

var createTable = regexp.MustCompile(`(?i)CREATE TABLE (?:IF NOT EXISTS )?([a-z_][a-z0-9_]*)`)

// tableOwners reads which owner creates which table from the migrations.
func tableOwners(t *testing.T) map[string]string {
	t.Helper()
	entries, err := fs.ReadDir(migrations.FS(), ".")
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for _, e := range entries {
		num, _, ok := strings.Cut(e.Name(), "_")
		n, err := strconv.Atoi(num)
		if !ok || err != nil {
			t.Fatalf("migration %s: want a number before its first '_'", e.Name())
		}
		i := slices.IndexFunc(owners, func(o struct {
			below int
			owner string
		}) bool {
			return n < o.below
		})
		if i < 0 {
			t.Fatalf("migration %s: number %d is in no owner's range", e.Name(), n)
		}
		body, err := fs.ReadFile(migrations.FS(), e.Name())
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range createTable.FindAllStringSubmatch(string(body), -1) {
			out[m[1]] = owners[i].owner
		}
	}
	return out
}

// sqlTable finds the tables a statement reads or writes.
var sqlTable = regexp.MustCompile(`\b(?:FROM|JOIN|INTO|UPDATE)\s+([a-z_][a-z0-9_]*)`)

// TestEachServiceQueriesOnlyItsTables: no Go file outside a service's
// folder queries its tables; what another service needs travels in events
// and workflow results. Each services/<svc> may touch the tables its own
// migrations create and the platform's (outbox, processed_messages,
// poison_messages, lineage_edges, activity_bridge, workers); the
// composition root (internal/stack), the CLI (cmd/groundmesh) and the
// workflows only the platform's. The SQL is what the files' string
// literals hold after FROM, JOIN, INTO or UPDATE. Test files are exempt
// (a test may play another service to set up its fixture), and so is
// bench/, whose programs measure a whole stack and read its results where
// they lie. The migrations themselves are SQL, not scanned: ground's
// 00054 reads train's tables once, to backfill its own at upgrade.
func TestEachServiceQueriesOnlyItsTables(t *testing.T) {
	tables := tableOwners(t)
	for _, must := range []string{"synth_sets", "runs", "model_exports", "ground_runs", "outbox"} {
		if tables[must] == "" {
			t.Fatalf("no migration creates %s: the owner map is wrong", must)
		}
	}
	type scope struct {
		dir, owner string
	}
	var scopes []scope
	services, err := os.ReadDir("../services")
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range services {
		if s.IsDir() {
			scopes = append(scopes, scope{"../services/" + s.Name(), s.Name()})
		}
	}
	if len(scopes) < 5 {
		t.Fatalf("found %d services under ../services", len(scopes))
	}
	scopes = append(scopes, scope{"../internal/stack", "platform"}, scope{"../cmd/groundmesh", "platform"}, scope{"../workflows", "platform"})
	scanned := 0
	for _, sc := range scopes {
		err := filepath.WalkDir(sc.dir, func(path string, d fs.DirEntry, err error) error {
			if err != nil || d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
				return err
			}
			scanned++
			src, err := os.ReadFile(path)
			if err != nil {
				return err
			}
			for _, lit := range stringLiterals(t, path, src) {
				for _, m := range sqlTable.FindAllStringSubmatchIndex(lit.text, -1) {
					table := lit.text[m[2]:m[3]]
					owner, ok := tables[table]
					if !ok || owner == "platform" || owner == sc.owner {
						continue
					}
					line := lit.line + strings.Count(lit.text[:m[0]], "\n")
					t.Errorf("%s:%d: queries %s, a table of services/%s (%s may touch only %s): take what it needs from that service's events, workflow results or API",
						strings.TrimPrefix(path, "../"), line, table, owner, strings.TrimPrefix(sc.dir, "../"), allowed(sc.owner))
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if scanned < 50 {
		t.Fatalf("scanned %d Go files: the folders moved?", scanned)
	}
}

func allowed(owner string) string {
	if owner == "platform" {
		return "platform tables"
	}
	return "its own and platform tables"
}

type literal struct {
	text string
	line int
}

// stringLiterals are the string literals of a Go file, unquoted, with the
// line each starts on.
func stringLiterals(t *testing.T, path string, src []byte) []literal {
	fset := token.NewFileSet()
	file := fset.AddFile(path, -1, len(src))
	var s scanner.Scanner
	s.Init(file, src, func(pos token.Position, msg string) { t.Errorf("%s: %s", pos, msg) }, 0)
	var out []literal
	for {
		pos, tok, lit := s.Scan()
		if tok == token.EOF {
			return out
		}
		if tok != token.STRING {
			continue
		}
		text, err := strconv.Unquote(lit)
		if err != nil {
			text = lit
		}
		out = append(out, literal{text: text, line: fset.Position(pos).Line})
	}
}
