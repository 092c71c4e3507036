package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"regexp"
	"strconv"
	"strings"

	"go.yaml.in/yaml/v3"
)

// maxFileSize bounds the configuration file; a real one is a few KiB.
const maxFileSize = 1 << 20

// source remembers where each option's value came from, so that Finish
// can point at the line to fix. A nil *source knows nothing.
type source struct {
	name  string            // file name as given
	lines map[string]int    // YAML path (portals[0].listen) → line
	flags map[string]string // YAML path → flag that overrode it (--portal)
}

// position returns "FILE:LINE" or "--flag" for path or its nearest
// ancestor that has one, or "".
func (s *source) position(path string) string {
	if s == nil {
		return ""
	}
	for p := path; p != ""; p = parentPath(p) {
		if f, ok := s.flags[p]; ok {
			return f
		}
		if l, ok := s.lines[p]; ok {
			return s.name + ":" + strconv.Itoa(l)
		}
	}
	return ""
}

// parentPath strips the last element: a.b[2].c → a.b[2] → a.b → a → "".
func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i < 0 {
		return ""
	}
	return p[:i]
}

// LoadFile reads the configuration file at path over the defaults. When
// the file does not exist and optional is true (no --config given, the
// default path), it returns the defaults; otherwise a missing file is an
// error. Call Merge and Finish on the result.
func LoadFile(path string, optional bool) (*Config, error) {
	f, err := os.Open(path)
	if err != nil {
		if optional && errors.Is(err, os.ErrNotExist) {
			return Default(), nil
		}
		return nil, fmt.Errorf("config file: %w", err)
	}
	defer f.Close()
	return Load(path, f)
}

// Load decodes a YAML configuration from r over the defaults; name (the
// file's path) prefixes error messages. An empty document gives the
// defaults. Unknown keys, duplicate keys, values of the wrong type and a
// second document are errors that name the line. Call Merge and Finish
// on the result.
func Load(name string, r io.Reader) (*Config, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("config file %s: %w", name, err)
	}
	if len(data) > maxFileSize {
		return nil, fmt.Errorf("config file %s: larger than %d bytes: is it the right file?", name, maxFileSize)
	}
	c := Default()
	src := &source{name: name, lines: map[string]int{}, flags: map[string]string{}}
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	var doc yaml.Node
	switch err := dec.Decode(&doc); {
	case errors.Is(err, io.EOF):
		c.src = src
		return c, nil
	case err != nil:
		return nil, fileError(name, err, nil)
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); !errors.Is(err, io.EOF) {
		if err != nil {
			return nil, fileError(name, err, nil)
		}
		return nil, invalidf("%s:%d: a second YAML document: keep one document (remove the '---')", name, extra.Line)
	}
	root := &doc
	if root.Kind == yaml.DocumentNode && len(root.Content) == 1 {
		root = root.Content[0]
	}
	if root.Kind == yaml.ScalarNode && root.Tag == "!!null" {
		c.src = src
		return c, nil // a document holding only comments
	}
	if root.Kind != yaml.MappingNode {
		return nil, invalidf("%s:%d: expected a mapping of options (key: value), got %s", name, root.Line, kindName(root))
	}
	recordLines(root, "", src.lines)
	// Portals given in the file replace the default list, not extend it.
	c.Portals = nil
	if err := decodeStrict(data, c); err != nil {
		return nil, fileError(name, err, src.lines)
	}
	if c.Portals == nil {
		c.Portals = Default().Portals
	}
	c.src = src
	return c, nil
}

// decodeStrict decodes the (single) document in data into c, refusing
// unknown keys (yaml.Node's Decode has no KnownFields).
func decodeStrict(data []byte, c *Config) error {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	dec.KnownFields(true)
	return dec.Decode(c)
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("the value %q", n.Value)
	case yaml.AliasNode:
		return "an alias"
	}
	return "something else"
}

// recordLines maps every YAML path under n to its line: the key's line
// for mapping values, the item's line for sequence items.
func recordLines(n *yaml.Node, path string, lines map[string]int) {
	switch n.Kind {
	case yaml.MappingNode:
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			lines[p] = k.Line
			recordLines(v, p, lines)
		}
	case yaml.SequenceNode:
		for i, v := range n.Content {
			p := fmt.Sprintf("%s[%d]", path, i)
			lines[p] = v.Line
			recordLines(v, p, lines)
		}
	}
}

var (
	reLine     = regexp.MustCompile(`^line (\d+): (.*)$`)
	reNotFound = regexp.MustCompile(`^field (.*) not found in type (\S+)$`)
	reCannot   = regexp.MustCompile("^cannot unmarshal !!(\\w+)(?: `(.*)`)? into (\\S+)$")
)

// fileError rewrites a yaml error into "FILE:LINE: KEY: what to fix"
// lines. lines (may be nil) finds the key at a line.
func fileError(name string, err error, lines map[string]int) error {
	var te *yaml.TypeError
	if !errors.As(err, &te) {
		msg := strings.TrimPrefix(err.Error(), "yaml: ")
		if m := reLine.FindStringSubmatch(msg); m != nil {
			return invalidf("%s:%s: %s", name, m[1], m[2])
		}
		return invalidf("%s: %s", name, msg)
	}
	keyAt := map[int]string{}
	for p, l := range lines {
		// The innermost key on the line, preferring keys to list items.
		if old, ok := keyAt[l]; !ok || strings.HasSuffix(old, "]") || !strings.HasSuffix(p, "]") && len(p) > len(old) {
			keyAt[l] = p
		}
	}
	var b strings.Builder
	b.WriteString(ErrInvalid.Error())
	for _, e := range te.Errors {
		b.WriteString("\n  ")
		m := reLine.FindStringSubmatch(e)
		if m == nil {
			fmt.Fprintf(&b, "%s: %s", name, e)
			continue
		}
		line, msg := m[1], m[2]
		l, _ := strconv.Atoi(line)
		key := keyAt[l]
		if nf := reNotFound.FindStringSubmatch(msg); nf != nil {
			known := keysOf(nf[2])
			msg = fmt.Sprintf("unknown key %q", nf[1])
			if parent := parentPath(key); parent != "" && strings.HasSuffix(key, "."+nf[1]) {
				msg = fmt.Sprintf("unknown key %q in %s", nf[1], parent)
			}
			if known != "" {
				msg += ": valid keys here are " + known
			}
			fmt.Fprintf(&b, "%s:%s: %s", name, line, msg)
			continue
		}
		if cm := reCannot.FindStringSubmatch(msg); cm != nil {
			if cm[2] != "" {
				msg = fmt.Sprintf("%q is %s: want %s", cm[2], yamlKind(cm[1]), goKind(cm[3]))
			} else {
				msg = fmt.Sprintf("got %s: want %s", yamlKind(cm[1]), goKind(cm[3]))
			}
		}
		if key != "" {
			fmt.Fprintf(&b, "%s:%s: %s: %s", name, line, key, msg)
		} else {
			fmt.Fprintf(&b, "%s:%s: %s", name, line, msg)
		}
	}
	return &Error{msg: b.String()}
}

func yamlKind(tag string) string {
	switch tag {
	case "str":
		return "a string"
	case "int":
		return "an integer"
	case "float":
		return "a number"
	case "bool":
		return "a boolean"
	case "seq":
		return "a list"
	case "map":
		return "a mapping"
	case "null":
		return "empty"
	}
	return "a " + tag
}

func goKind(t string) string {
	switch {
	case t == "time.Duration":
		return "a duration such as 10s or 1m30s"
	case t == "int", strings.HasPrefix(t, "int"), strings.HasPrefix(t, "uint"):
		return "an integer"
	case t == "string":
		return "a string"
	case t == "bool":
		return "true or false"
	case strings.HasPrefix(t, "[]"):
		return "a list"
	case strings.HasPrefix(t, "config."), strings.HasPrefix(t, "*config."):
		return "a mapping of options"
	}
	return t
}

// keysOf lists the YAML keys of a config struct type named like
// "config.Log", or "".
func keysOf(typeName string) string {
	var keys []string
	var walk func(t reflect.Type) bool
	walk = func(t reflect.Type) bool {
		for t.Kind() == reflect.Pointer || t.Kind() == reflect.Slice {
			t = t.Elem()
		}
		if t.Kind() != reflect.Struct || t.PkgPath() != reflect.TypeFor[Config]().PkgPath() {
			return false
		}
		if t.String() == typeName {
			for i := range t.NumField() {
				if k := yamlKey(t.Field(i)); k != "" {
					keys = append(keys, k)
				}
			}
			return true
		}
		for i := range t.NumField() {
			if f := t.Field(i); yamlKey(f) != "" && walk(f.Type) {
				return true
			}
		}
		return false
	}
	walk(reflect.TypeFor[Config]())
	return strings.Join(keys, ", ")
}

// yamlKey is the YAML key of a struct field, "" for unexported or
// skipped fields.
func yamlKey(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	k, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if k == "-" {
		return ""
	}
	return k
}

func (s *source) clone() *source {
	if s == nil {
		return nil
	}
	d := &source{name: s.name, lines: make(map[string]int, len(s.lines)), flags: make(map[string]string, len(s.flags))}
	for k, v := range s.lines {
		d.lines[k] = v
	}
	for k, v := range s.flags {
		d.flags[k] = v
	}
	return d
}

// invalidf returns an *Error holding one problem.
func invalidf(format string, args ...any) error {
	return &Error{msg: ErrInvalid.Error() + "\n  " + fmt.Sprintf(format, args...)}
}
