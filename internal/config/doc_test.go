package config

import (
	"bytes"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
	"text/template"
	"time"

	"github.com/urfave/cli/v2"
)

var update = flag.Bool("update", false, "rewrite docs/configuration.md")

const docPath = "../../docs/configuration.md"

// fieldDocs maps "Type.Field" of this package's structs to the field's
// doc comment, joined into one line.
func fieldDocs(t *testing.T) map[string]string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, "config.go", nil, parser.ParseComments)
	if err != nil {
		t.Fatal(err)
	}
	docs := map[string]string{}
	ast.Inspect(f, func(n ast.Node) bool {
		ts, ok := n.(*ast.TypeSpec)
		if !ok {
			return true
		}
		st, ok := ts.Type.(*ast.StructType)
		if !ok {
			return false
		}
		for _, fl := range st.Fields.List {
			for _, name := range fl.Names {
				docs[ts.Name.Name+"."+name.Name] = strings.Join(strings.Fields(fl.Doc.Text()), " ")
			}
		}
		return false
	})
	return docs
}

// option is one row of the options table.
type option struct {
	path, typ, def, flag, doc string
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	sizeType     = reflect.TypeFor[Size]()
)

// options walks Config and its nested structs in field order.
func options(t *testing.T) []option {
	t.Helper()
	docs := fieldDocs(t)
	def := Default()
	var out []option
	var walk func(rt reflect.Type, v reflect.Value, prefix string)
	walk = func(rt reflect.Type, v reflect.Value, prefix string) {
		for i := range rt.NumField() {
			f := rt.Field(i)
			key := yamlKey(f)
			if key == "" {
				continue
			}
			doc := docs[rt.Name()+"."+f.Name]
			if doc == "" {
				t.Errorf("%s.%s has no doc comment: it is the option's meaning in docs/configuration.md", rt.Name(), f.Name)
			}
			o := option{path: prefix + key, doc: doc, typ: typeName(f.Type)}
			if fl := f.Tag.Get("flag"); fl != "" {
				o.flag = "`--" + fl + "`"
			}
			var fv reflect.Value
			if v.IsValid() {
				fv = v.Field(i)
			}
			o.def = defaultText(f, fv)
			out = append(out, o)
			ft := f.Type
			if ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
				fv = reflect.Value{}
			}
			switch {
			case ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct:
				var first reflect.Value
				if fv.IsValid() && fv.Len() > 0 {
					first = fv.Index(0)
				}
				walk(ft.Elem(), first, o.path+"[].")
			case ft.Kind() == reflect.Struct && ft != durationType:
				walk(ft, fv, o.path+".")
			}
		}
	}
	walk(reflect.TypeFor[Config](), reflect.ValueOf(def).Elem(), "")
	return out
}

func typeName(t reflect.Type) string {
	switch {
	case t == durationType:
		return "duration"
	case t == sizeType:
		return "size"
	case t.Kind() == reflect.Pointer:
		return typeName(t.Elem())
	case t.Kind() == reflect.Slice:
		return "list of " + typeName(t.Elem()) + "s"
	case t.Kind() == reflect.Struct:
		return "mapping"
	case t.Kind() == reflect.Int:
		return "integer"
	case t.Kind() == reflect.Bool:
		return "boolean"
	}
	return t.Kind().String()
}

func defaultText(f reflect.StructField, v reflect.Value) string {
	if d := f.Tag.Get("default"); d != "" {
		return strings.ReplaceAll(d, "'", "`") // 'x' in a tag is `x` in Markdown
	}
	if !v.IsValid() {
		return ""
	}
	switch {
	case v.Type() == durationType:
		return "`" + time.Duration(v.Int()).String() + "`"
	case v.Kind() == reflect.Struct:
		return ""
	case v.Kind() == reflect.Slice:
		var items []string
		for i := range v.Len() {
			items = append(items, fmt.Sprintf("%v", v.Index(i).Interface()))
		}
		return fmt.Sprintf("%d item(s)", len(items))
	case v.Kind() == reflect.String && v.String() == "":
		return "empty"
	}
	return fmt.Sprintf("`%v`", v.Interface())
}

func renderDoc(t *testing.T) []byte {
	t.Helper()
	var tb strings.Builder
	tb.WriteString("| option | type | default | flag | meaning |\n| --- | --- | --- | --- | --- |\n")
	for _, o := range options(t) {
		fmt.Fprintf(&tb, "| `%s` | %s | %s | %s | %s |\n", o.path, o.typ, o.def, o.flag,
			strings.ReplaceAll(o.doc, "|", `\|`))
	}
	c := Default()
	if err := c.Finish(); err != nil {
		t.Fatal(err)
	}
	var def bytes.Buffer
	if err := c.Print(&def); err != nil {
		t.Fatal(err)
	}
	tmpl, err := template.ParseFiles("testdata/configuration.md.tmpl")
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	if err := tmpl.Execute(&out, map[string]string{"Options": tb.String(), "Defaults": def.String()}); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

// TestConfigurationDoc is the golden test of docs/configuration.md.
func TestConfigurationDoc(t *testing.T) {
	got := renderDoc(t)
	if *update {
		if err := os.WriteFile(docPath, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatalf("%v: run `go test ./internal/config -update`", err)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("%s is out of date: run `go test ./internal/config -update` and review the diff", filepath.Clean(docPath))
	}
}

var yamlBlock = regexp.MustCompile("(?s)```yaml\n(.*?)```")

// TestDocExamplesValid loads every YAML example of the doc, and the
// packaged default file.
func TestDocExamplesValid(t *testing.T) {
	doc := renderDoc(t)
	blocks := yamlBlock.FindAllSubmatch(doc, -1)
	if len(blocks) < 2 {
		t.Fatalf("found %d yaml examples in the doc, want at least 2", len(blocks))
	}
	for i, b := range blocks {
		c, err := Load(fmt.Sprintf("example %d", i), bytes.NewReader(b[1]))
		if err == nil {
			err = c.Finish()
		}
		if err != nil {
			t.Errorf("doc example %d:\n%s\n%v", i, b[1], err)
		}
	}
	c, err := LoadFile("../../packaging/stave.yaml", false)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Finish(); err != nil {
		t.Fatal(err)
	}
	if c.DataDir != "/var/lib/stave" || c.SocketPath() != "/run/stave/stave.sock" {
		t.Errorf("packaging/stave.yaml: data_dir %q, socket %q: the systemd unit expects /var/lib/stave and /run/stave/stave.sock",
			c.DataDir, c.SocketPath())
	}
}

// TestFlagsMatchTags keeps CLIFlags, the `flag` tags and Merge in step:
// every tag has a flag, every flag but --config/--print-config has a
// tag, and setting each flag changes the configuration.
func TestFlagsMatchTags(t *testing.T) {
	tags := map[string]bool{}
	for _, o := range options(t) {
		if o.flag != "" {
			tags[strings.Trim(o.flag, "`-")] = true
		}
	}
	defined := map[string]cli.Flag{}
	for _, f := range CLIFlags() {
		name := f.Names()[0]
		defined[name] = f
		if name == "config" || name == "print-config" {
			continue
		}
		if !tags[name] {
			t.Errorf("CLIFlags has --%s but no Config field has flag:%q", name, name)
		}
	}
	for name := range tags {
		if defined[name] == nil {
			t.Errorf("a Config field has flag:%q but CLIFlags has no --%s", name, name)
		}
	}
	samples := map[string]any{
		"data-dir": "/srv/stave", "portal": []string{"10.0.0.1:3260"}, "advertise": []string{"192.0.2.1:3260"},
		"api": "unix:/tmp/x.sock", "discovery-chap": "u:0123456789abc", "log-level": "debug", "log-format": "json",
		"nop-interval": 7 * time.Second, "nop-timeout": 9 * time.Second, "queue-depth": 7,
		"http-listen": "127.0.0.1:9090", "http-token-file": "/etc/stave/token", "scrub-rate": "1MiB",
		"http-tls-cert": "/etc/stave/api.crt", "http-tls-key": "/etc/stave/api.key", "http-client-ca": "/etc/stave/clients.pem",
		"gc-interval":    time.Minute,
		"etcd-endpoints": []string{"https://10.0.0.1:2379"}, "etcd-ca": "/etc/stave/etcd-ca.pem",
		"etcd-cert": "/etc/stave/etcd.crt", "etcd-key": "/etc/stave/etcd.key",
		"etcd-listen-client-urls": []string{"http://127.0.0.1:2379"}, "etcd-listen-peer-urls": []string{"http://127.0.0.1:2380"},
		"initial-cluster": []string{"n1=http://10.0.0.1:2380"}, "join": "10.0.0.1:2379",
		"node-name": "n1", "label": []string{"zone=a"},
		"replication-listen": "10.0.0.1:3270", "replication-advertise": "192.0.2.1:3270", "owner-lease-ttl": 3 * time.Second, "replace-after": time.Minute, "floating-interface": "eth1",
		"replication-tls-cert": "/etc/stave/rep.crt", "replication-tls-key": "/etc/stave/rep.key", "replication-tls-ca": "/etc/stave/rep-ca.pem",
	}
	for name := range tags {
		v, ok := samples[name]
		if !ok {
			t.Errorf("no sample value for --%s in TestFlagsMatchTags", name)
			continue
		}
		c := Default()
		before := fmt.Sprintf("%+v %+v", *c, c.Portals)
		if err := c.Merge(mapFlags{name: v}); err != nil {
			t.Errorf("--%s: %v", name, err)
			continue
		}
		if after := fmt.Sprintf("%+v %+v", *c, c.Portals); after == before {
			t.Errorf("setting --%s does not change the configuration: Merge does not handle it", name)
		}
	}
}
