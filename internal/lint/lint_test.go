package lint

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// goFile is one parsed Go file of the module.
type goFile struct {
	rel  string // slash-separated path from the module root
	ast  *ast.File
	test bool
}

// repo is the parsed module, shared by the tests of one run.
type repo struct {
	fset  *token.FileSet
	files []goFile
}

func moduleRoot(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(".")
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("go.mod not found")
		}
		dir = parent
	}
}

func loadRepo(t *testing.T) *repo {
	t.Helper()
	root := moduleRoot(t)
	r := &repo{fset: token.NewFileSet()}
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		name := d.Name()
		if d.IsDir() {
			if p != root && (strings.HasPrefix(name, ".") || strings.HasPrefix(name, "_") ||
				name == "testdata" || name == "vendor" || name == "bin" || name == "stave-data") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(name, ".go") {
			return nil
		}
		f, err := parser.ParseFile(r.fset, p, nil, parser.ParseComments)
		if err != nil {
			// A file being edited by someone else may not parse; the
			// compiler reports that, not this test.
			t.Logf("skipping %s: %v", p, err)
			return nil
		}
		rel, _ := filepath.Rel(root, p)
		r.files = append(r.files, goFile{rel: filepath.ToSlash(rel), ast: f, test: strings.HasSuffix(name, "_test.go")})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(r.files) == 0 {
		t.Fatal("no Go files found")
	}
	return r
}

// importName returns the local name under which f imports path, or "".
func importName(f *ast.File, path string) string {
	for _, im := range f.Imports {
		p, _ := strconv.Unquote(im.Path.Value)
		if p != path {
			continue
		}
		if im.Name != nil {
			return im.Name.Name
		}
		return path[strings.LastIndexByte(path, '/')+1:]
	}
	return ""
}

// calls reports each pkg.Sel selector in f where pkg is the local name of
// the import path and keep(Sel) is true.
func (r *repo) selectors(f goFile, path string, keep func(sel string) bool, report func(pos token.Position, sel string)) {
	name := importName(f.ast, path)
	if name == "" || name == "_" {
		return
	}
	ast.Inspect(f.ast, func(n ast.Node) bool {
		se, ok := n.(*ast.SelectorExpr)
		if !ok {
			return true
		}
		if id, ok := se.X.(*ast.Ident); ok && id.Name == name && id.Obj == nil && keep(se.Sel.Name) {
			report(r.fset.Position(se.Pos()), name+"."+se.Sel.Name)
		}
		return true
	})
}

func hasDirPrefix(rel string, dirs ...string) bool {
	return slices.ContainsFunc(dirs, func(d string) bool { return strings.HasPrefix(rel, d+"/") })
}

func TestNoPrintOrStdLog(t *testing.T) {
	r := loadRepo(t)
	for _, f := range r.files {
		if f.test || hasDirPrefix(f.rel, "cmd", "tools", "tests") {
			continue
		}
		bad := func(pos token.Position, sel string) {
			t.Errorf("%s:%d: %s: log through the component's *slog.Logger instead (STYLE.md §17)", f.rel, pos.Line, sel)
		}
		r.selectors(f, "fmt", func(s string) bool { return strings.HasPrefix(s, "Print") }, bad)
		r.selectors(f, "log", func(string) bool { return true }, bad)
	}
}

func TestNoWallClockInPurePackages(t *testing.T) {
	r := loadRepo(t)
	for _, f := range r.files {
		if f.test || !hasDirPrefix(f.rel, "target/iscsi/login", "target/scsi/pr", "cluster/ownership") {
			continue
		}
		r.selectors(f, "time", func(s string) bool { return s == "Now" || s == "Since" || s == "Until" },
			func(pos token.Position, sel string) {
				t.Errorf("%s:%d: %s in a pure package: take the time as an argument or Tick (STYLE.md §11)", f.rel, pos.Line, sel)
			})
	}
}

func TestNoRawAtomics(t *testing.T) {
	r := loadRepo(t)
	raw := func(s string) bool {
		for _, p := range []string{"Add", "Load", "Store", "Swap", "CompareAndSwap", "And", "Or"} {
			if strings.HasPrefix(s, p) {
				return true
			}
		}
		return false
	}
	for _, f := range r.files {
		r.selectors(f, "sync/atomic", raw, func(pos token.Position, sel string) {
			t.Errorf("%s:%d: %s: use the typed atomics (atomic.Int64 …) instead (STYLE.md §22)", f.rel, pos.Line, sel)
		})
	}
}

func TestNoInit(t *testing.T) {
	r := loadRepo(t)
	for _, f := range r.files {
		if f.test {
			continue
		}
		for _, d := range f.ast.Decls {
			if fd, ok := d.(*ast.FuncDecl); ok && fd.Recv == nil && fd.Name.Name == "init" {
				t.Errorf("%s:%d: func init: no init registration (STYLE.md §2)", f.rel, r.fset.Position(fd.Pos()).Line)
			}
		}
	}
}

func TestPackageDocs(t *testing.T) {
	r := loadRepo(t)
	type pkg struct{ hasFiles, hasDoc bool }
	pkgs := map[string]*pkg{}
	for _, f := range r.files {
		if f.test {
			continue
		}
		dir := f.rel[:max(0, strings.LastIndexByte(f.rel, '/'))]
		if dir == "" {
			dir = "."
		}
		p := pkgs[dir]
		if p == nil {
			p = &pkg{}
			pkgs[dir] = p
		}
		p.hasFiles = true
		if f.ast.Doc != nil && strings.TrimSpace(f.ast.Doc.Text()) != "" {
			p.hasDoc = true
		}
	}
	var dirs []string
	for d := range pkgs {
		dirs = append(dirs, d)
	}
	slices.Sort(dirs)
	for _, d := range dirs {
		if p := pkgs[d]; p.hasFiles && !p.hasDoc {
			t.Errorf("%s: package has no doc comment (STYLE.md §3): add one to doc.go or the main file", d)
		}
	}
}

// TestSentinelErrorPrefix checks that package-level errors.New sentinels
// start with "<package>: " (STYLE.md §6); for a command (package main) the
// prefix is its directory's name, e.g. "stave: ".
func TestSentinelErrorPrefix(t *testing.T) {
	r := loadRepo(t)
	for _, f := range r.files {
		if f.test {
			continue
		}
		for _, v := range r.sentinelViolations(f) {
			t.Error(v)
		}
	}
}

// sentinelViolations returns a message for each package-level
// errors.New("…") in f whose text lacks the package prefix.
func (r *repo) sentinelViolations(f goFile) []string {
	errs := importName(f.ast, "errors")
	if errs == "" {
		return nil
	}
	prefix := f.ast.Name.Name + ": "
	if f.ast.Name.Name == "main" {
		dir := f.rel[:max(0, strings.LastIndexByte(f.rel, '/'))]
		prefix = dir[strings.LastIndexByte(dir, '/')+1:] + ": "
	}
	var out []string
	for _, d := range f.ast.Decls {
		gd, ok := d.(*ast.GenDecl)
		if !ok || gd.Tok != token.VAR {
			continue
		}
		for _, sp := range gd.Specs {
			for _, v := range sp.(*ast.ValueSpec).Values {
				call, ok := v.(*ast.CallExpr)
				if !ok || len(call.Args) != 1 {
					continue
				}
				se, ok := call.Fun.(*ast.SelectorExpr)
				if !ok || se.Sel.Name != "New" {
					continue
				}
				if id, ok := se.X.(*ast.Ident); !ok || id.Name != errs {
					continue
				}
				lit, ok := call.Args[0].(*ast.BasicLit)
				if !ok || lit.Kind != token.STRING {
					continue
				}
				msg, _ := strconv.Unquote(lit.Value)
				if !strings.HasPrefix(msg, prefix) {
					out = append(out, fmt.Sprintf("%s:%d: sentinel error %q: start it with %q (STYLE.md §6)",
						f.rel, r.fset.Position(lit.Pos()).Line, msg, prefix))
				}
			}
		}
	}
	return out
}

// TestDetectors checks that the checks find what they look for, on a
// synthetic file, so that a broken check cannot pass silently.
func TestDetectors(t *testing.T) {
	src := `package x

import (
	"errors"
	f "fmt"
	"log"
	"sync/atomic"
	"time"
)

func init() {}

var (
	errGood = errors.New("x: fine")
	errBad  = errors.New("no prefix")
)

func g() {
	var n int64
	var a atomic.Int64
	a.Add(1)
	atomic.AddInt64(&n, 1)
	f.Println("hi")
	log.Printf("x")
	_ = time.Now()
}
`
	r := &repo{fset: token.NewFileSet()}
	af, err := parser.ParseFile(r.fset, "x.go", src, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	gf := goFile{rel: "target/scsi/pr/x.go", ast: af}
	var got []string
	rep := func(_ token.Position, sel string) { got = append(got, sel) }
	r.selectors(gf, "fmt", func(s string) bool { return strings.HasPrefix(s, "Print") }, rep)
	r.selectors(gf, "log", func(string) bool { return true }, rep)
	r.selectors(gf, "time", func(s string) bool { return s == "Now" }, rep)
	r.selectors(gf, "sync/atomic", func(s string) bool { return strings.HasPrefix(s, "Add") }, rep)
	want := []string{"f.Println", "log.Printf", "time.Now", "atomic.AddInt64"}
	if !slices.Equal(got, want) {
		t.Errorf("detected %q, want %q", got, want)
	}
	if af.Doc != nil {
		t.Error("synthetic file has a doc comment")
	}
	if v := r.sentinelViolations(gf); len(v) != 1 || !strings.Contains(v[0], `"no prefix"`) {
		t.Errorf("sentinel violations = %q, want one for \"no prefix\"", v)
	}
}
