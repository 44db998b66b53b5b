// Command config-keys writes the key tree of gitlab-runner's config.toml, as data, from the runner's
// own source at a release tag: the settings check extraConfig and extraGlobalConfig against it.
//
//	config-keys -src <gitlab-runner source tree> -version 18.9.0 -o components/settings/config_keys.json
//
// It reads the Go source, not a build: go/parser and go/ast over the packages the config structs live
// in, starting at common.Config (the global part; its `runners` key holds common.RunnerConfig). Keys
// are read as github.com/BurntSushi/toml (the runner's TOML library) reads them: the name in the
// `toml:"…"` tag, else the field's name; `toml:"-"` and unexported fields are left out; tag options
// (omitempty, omitzero) name no key; an embedded struct without a tag name lends its keys to the
// table that embeds it (RunnerCredentials and RunnerSettings in RunnerConfig), and a key of the table
// itself wins over an embedded one. Pointers are followed; slices are arrays, maps are tables of free
// keys. A type with its own UnmarshalText takes a string; one with its own UnmarshalTOML must be
// described in customTypes, and a type from outside the runner's module in externalTypes: anything
// not described stops the generator, so a new shape is looked at when the runner pin moves.
//
// Each value type is one of these (JSON):
//
//	"string" "integer" "unsigned" "float" "boolean" "any"
//	"duration"         a Go duration string such as "1h30m" (or an integer of nanoseconds)
//	"datetime"         a TOML date-time
//	"string-or-array"  a string or an array of strings
//	{"array": T}       an array of T
//	{"map": T}         a table whose keys are free and whose values are T
//	{"table": {key: T, …}}  a table with exactly these keys
package main

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path"
	"path/filepath"
	"reflect"
	"regexp"
	"sort"
	"strconv"
	"strings"
)

// Node is one value type of the tree.
type Node struct {
	Scalar string
	Array  *Node
	Map    *Node
	Table  map[string]*Node
}

func scalar(name string) *Node { return &Node{Scalar: name} }

// MarshalJSON writes a node in the compact shape the package comment describes.
func (n *Node) MarshalJSON() ([]byte, error) {
	switch {
	case n.Array != nil:
		return json.Marshal(map[string]*Node{"array": n.Array})
	case n.Map != nil:
		return json.Marshal(map[string]*Node{"map": n.Map})
	case n.Table != nil:
		return json.Marshal(map[string]map[string]*Node{"table": n.Table})
	}
	return json.Marshal(n.Scalar)
}

// Keys counts the keys of every table under n (array items and map values included once).
func (n *Node) Keys() int {
	switch {
	case n.Array != nil:
		return n.Array.Keys()
	case n.Map != nil:
		return n.Map.Keys()
	}
	count := len(n.Table)
	for _, child := range n.Table {
		count += child.Keys()
	}
	return count
}

// customTypes: the runner's types with an UnmarshalTOML of their own, and what that accepts.
var customTypes = map[string]*Node{
	// common/config.go: "StringOrArray implements UnmarshalTOML to unmarshal either a string or array of strings."
	"common.StringOrArray": scalar("string-or-array"),
}

// externalTypes: types from outside the runner's module, by import path and name, as TOML reads them.
// Where BurntSushi/toml treats a type by identity (time.Duration), a named type built on it is not
// that type: `underlying` is what such a type becomes.
var externalTypes = map[string]struct{ node, underlying *Node }{
	"time.Duration": {scalar("duration"), scalar("integer")},
	"time.Time":     {scalar("datetime"), nil},
	// k8s.io/api/core/v1: `type Capability string`, `type ProcMountType string`, no text unmarshalers.
	"k8s.io/api/core/v1.Capability":    {scalar("string"), scalar("string")},
	"k8s.io/api/core/v1.ProcMountType": {scalar("string"), scalar("string")},
}

var builtins = map[string]string{
	"string": "string", "bool": "boolean",
	"int": "integer", "int8": "integer", "int16": "integer", "int32": "integer", "int64": "integer", "rune": "integer",
	"uint": "unsigned", "uint8": "unsigned", "uint16": "unsigned", "uint32": "unsigned", "uint64": "unsigned",
	"byte": "unsigned", "uintptr": "unsigned",
	"float32": "float", "float64": "float",
	"any": "any",
}

// Package is one parsed Go package of the runner's module.
type Package struct {
	Path  string
	Name  string
	Types map[string]*Decl
	// Unmarshalers: type name -> the unmarshal methods it has (UnmarshalTOML, UnmarshalText).
	Unmarshalers map[string]map[string]bool
}

// Decl is a type declaration and the file it is in (whose imports its names refer to).
type Decl struct {
	Pkg  *Package
	File *ast.File
	Spec *ast.TypeSpec
}

// Loader parses the module's packages on demand.
type Loader struct {
	Root     string
	Module   string
	packages map[string]*Package
	fset     *token.FileSet
	visiting map[string]bool
	// undescribed: external types met that externalTypes does not describe, and where.
	undescribed map[string]string
}

func NewLoader(root string) (*Loader, error) {
	data, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		return nil, err
	}
	match := regexp.MustCompile(`(?m)^module\s+(\S+)`).FindSubmatch(data)
	if match == nil {
		return nil, errors.New("go.mod names no module")
	}
	return &Loader{
		Root:        root,
		Module:      string(match[1]),
		packages:    map[string]*Package{},
		fset:        token.NewFileSet(),
		visiting:    map[string]bool{},
		undescribed: map[string]string{},
	}, nil
}

func (l *Loader) inModule(importPath string) bool {
	return importPath == l.Module || strings.HasPrefix(importPath, l.Module+"/")
}

// Load parses the package at importPath (its non-test files; the first declaration of a name wins
// where build-constrained files repeat one).
func (l *Loader) Load(importPath string) (*Package, error) {
	if pkg, ok := l.packages[importPath]; ok {
		return pkg, nil
	}
	dir := filepath.Join(l.Root, filepath.FromSlash(strings.TrimPrefix(strings.TrimPrefix(importPath, l.Module), "/")))
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("package %s: %w", importPath, err)
	}
	pkg := &Package{Path: importPath, Types: map[string]*Decl{}, Unmarshalers: map[string]map[string]bool{}}
	for _, entry := range entries {
		name := entry.Name()
		if entry.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		file, err := parser.ParseFile(l.fset, filepath.Join(dir, name), nil, parser.SkipObjectResolution)
		if err != nil {
			return nil, err
		}
		pkg.Name = file.Name.Name
		for _, decl := range file.Decls {
			switch d := decl.(type) {
			case *ast.GenDecl:
				for _, spec := range d.Specs {
					if ts, ok := spec.(*ast.TypeSpec); ok {
						if _, seen := pkg.Types[ts.Name.Name]; !seen {
							pkg.Types[ts.Name.Name] = &Decl{Pkg: pkg, File: file, Spec: ts}
						}
					}
				}
			case *ast.FuncDecl:
				method := d.Name.Name
				if d.Recv == nil || len(d.Recv.List) != 1 || (method != "UnmarshalTOML" && method != "UnmarshalText") {
					continue
				}
				receiver := d.Recv.List[0].Type
				if star, ok := receiver.(*ast.StarExpr); ok {
					receiver = star.X
				}
				if ident, ok := receiver.(*ast.Ident); ok {
					if pkg.Unmarshalers[ident.Name] == nil {
						pkg.Unmarshalers[ident.Name] = map[string]bool{}
					}
					pkg.Unmarshalers[ident.Name][method] = true
				}
			}
		}
	}
	l.packages[importPath] = pkg
	return pkg, nil
}

// importOf finds the import a qualified name's package name refers to in a file.
func (l *Loader) importOf(file *ast.File, name string) (string, error) {
	for _, spec := range file.Imports {
		importPath, _ := strconv.Unquote(spec.Path.Value)
		if spec.Name != nil {
			if spec.Name.Name == name {
				return importPath, nil
			}
			continue
		}
		if l.inModule(importPath) {
			pkg, err := l.Load(importPath)
			if err != nil {
				return "", err
			}
			if pkg.Name == name {
				return importPath, nil
			}
			continue
		}
		// Outside the module the package name is guessed from the path, as goimports does.
		last := path.Base(importPath)
		if regexp.MustCompile(`^v[0-9]+$`).MatchString(last) && path.Dir(importPath) != "." {
			last = path.Base(path.Dir(importPath))
		}
		for _, guess := range []string{last, strings.TrimPrefix(last, "go-"), strings.ReplaceAll(last, "-", "")} {
			if guess == name {
				return importPath, nil
			}
		}
	}
	return "", fmt.Errorf("%s: no import named %s", l.fset.Position(file.Pos()), name)
}

// Type is the TOML value a Go type expression takes, in the context of the file it is written in.
func (l *Loader) Type(expr ast.Expr, pkg *Package, file *ast.File) (*Node, error) {
	switch e := expr.(type) {
	case *ast.ParenExpr:
		return l.Type(e.X, pkg, file)
	case *ast.StarExpr:
		return l.Type(e.X, pkg, file)
	case *ast.Ident:
		if kind, ok := builtins[e.Name]; ok {
			return scalar(kind), nil
		}
		decl, ok := pkg.Types[e.Name]
		if !ok {
			return nil, fmt.Errorf("%s: unknown type %s", pkg.Path, e.Name)
		}
		return l.Named(decl)
	case *ast.SelectorExpr:
		qualifier, ok := e.X.(*ast.Ident)
		if !ok {
			return nil, fmt.Errorf("%s: unexpected type expression", l.fset.Position(e.Pos()))
		}
		importPath, err := l.importOf(file, qualifier.Name)
		if err != nil {
			return nil, err
		}
		if !l.inModule(importPath) {
			external, ok := externalTypes[importPath+"."+e.Sel.Name]
			if !ok {
				// Collected, so one run names every type to describe.
				l.undescribed[importPath+"."+e.Sel.Name] = l.fset.Position(e.Pos()).String()
				return scalar("any"), nil
			}
			return external.node, nil
		}
		other, err := l.Load(importPath)
		if err != nil {
			return nil, err
		}
		decl, ok := other.Types[e.Sel.Name]
		if !ok {
			return nil, fmt.Errorf("%s: no type %s", importPath, e.Sel.Name)
		}
		return l.Named(decl)
	case *ast.ArrayType:
		elem, err := l.Type(e.Elt, pkg, file)
		if err != nil {
			return nil, err
		}
		return &Node{Array: elem}, nil
	case *ast.MapType:
		elem, err := l.Type(e.Value, pkg, file)
		if err != nil {
			return nil, err
		}
		return &Node{Map: elem}, nil
	case *ast.InterfaceType:
		if e.Methods != nil && len(e.Methods.List) > 0 {
			return nil, fmt.Errorf("%s: TOML cannot decode into an interface with methods", l.fset.Position(e.Pos()))
		}
		return scalar("any"), nil
	case *ast.StructType:
		return l.Struct(e, pkg, file)
	}
	return nil, fmt.Errorf("%s: TOML cannot decode into %T", l.fset.Position(expr.Pos()), expr)
}

// Named is the TOML value of a declared type: its own unmarshaler decides, else its definition.
func (l *Loader) Named(decl *Decl) (*Node, error) {
	qualified := decl.Pkg.Name + "." + decl.Spec.Name.Name
	if decl.Spec.Assign.IsValid() { // an alias is the type it names
		return l.Type(decl.Spec.Type, decl.Pkg, decl.File)
	}
	methods := decl.Pkg.Unmarshalers[decl.Spec.Name.Name]
	if methods["UnmarshalTOML"] {
		custom, ok := customTypes[qualified]
		if !ok {
			return nil, fmt.Errorf("%s has an UnmarshalTOML of its own: describe what it accepts in customTypes", qualified)
		}
		return custom, nil
	}
	if methods["UnmarshalText"] {
		return scalar("string"), nil
	}
	if l.visiting[qualified] {
		return nil, fmt.Errorf("%s refers to itself: a recursive config type is not supported", qualified)
	}
	l.visiting[qualified] = true
	defer delete(l.visiting, qualified)
	return l.Underlying(decl.Spec.Type, decl.Pkg, decl.File)
}

// Underlying is what a new defined type built on expr becomes: the underlying type, without the
// methods or the identity of the type it names.
func (l *Loader) Underlying(expr ast.Expr, pkg *Package, file *ast.File) (*Node, error) {
	switch e := expr.(type) {
	case *ast.ParenExpr:
		return l.Underlying(e.X, pkg, file)
	case *ast.Ident:
		if decl, ok := pkg.Types[e.Name]; ok {
			return l.Underlying(decl.Spec.Type, decl.Pkg, decl.File)
		}
	case *ast.SelectorExpr:
		if qualifier, ok := e.X.(*ast.Ident); ok {
			importPath, err := l.importOf(file, qualifier.Name)
			if err != nil {
				return nil, err
			}
			if !l.inModule(importPath) {
				external, ok := externalTypes[importPath+"."+e.Sel.Name]
				if !ok || external.underlying == nil {
					return nil, fmt.Errorf("%s: a type built on %s.%s: describe its underlying type in externalTypes",
						l.fset.Position(e.Pos()), importPath, e.Sel.Name)
				}
				return external.underlying, nil
			}
			other, err := l.Load(importPath)
			if err != nil {
				return nil, err
			}
			if decl, ok := other.Types[e.Sel.Name]; ok {
				return l.Underlying(decl.Spec.Type, decl.Pkg, decl.File)
			}
		}
	}
	return l.Type(expr, pkg, file)
}

// Struct is a table of a struct's keys, read as BurntSushi/toml reads them.
func (l *Loader) Struct(st *ast.StructType, pkg *Package, file *ast.File) (*Node, error) {
	keys := map[string]*Node{}
	var embedded []*Node
	for _, field := range st.Fields.List {
		name, skip := "", false
		if field.Tag != nil {
			tag, err := strconv.Unquote(field.Tag.Value)
			if err != nil {
				return nil, err
			}
			value := reflect.StructTag(tag).Get("toml")
			skip = value == "-"
			name, _, _ = strings.Cut(value, ",") // options (omitempty, omitzero) name no key
		}
		if skip || (len(field.Names) > 0 && !anyExported(field.Names)) {
			continue
		}
		node, err := l.Type(field.Type, pkg, file)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", l.fset.Position(field.Pos()), err)
		}
		if len(field.Names) == 0 { // embedded
			if name == "" && node.Table != nil {
				embedded = append(embedded, node)
				continue
			}
			if name == "" {
				name = embeddedName(field.Type)
			}
			keys[name] = node
			continue
		}
		for _, ident := range field.Names {
			if !ident.IsExported() {
				continue
			}
			key := name
			if key == "" {
				key = ident.Name
			}
			keys[key] = node
		}
	}
	// The table's own keys hide those of an embedded struct.
	for _, table := range embedded {
		for key, node := range table.Table {
			if _, own := keys[key]; !own {
				keys[key] = node
			}
		}
	}
	return &Node{Table: keys}, nil
}

func anyExported(names []*ast.Ident) bool {
	for _, ident := range names {
		if ident.IsExported() {
			return true
		}
	}
	return false
}

func embeddedName(expr ast.Expr) string {
	switch e := expr.(type) {
	case *ast.StarExpr:
		return embeddedName(e.X)
	case *ast.SelectorExpr:
		return e.Sel.Name
	case *ast.Ident:
		return e.Name
	}
	return ""
}

// Tree is config.toml's whole key tree: common.Config.
func Tree(root string) (*Node, error) {
	loader, err := NewLoader(root)
	if err != nil {
		return nil, err
	}
	common, err := loader.Load(loader.Module + "/common")
	if err != nil {
		return nil, err
	}
	decl, ok := common.Types["Config"]
	if !ok {
		return nil, errors.New("common/config.go declares no Config")
	}
	tree, err := loader.Named(decl)
	if err != nil {
		return nil, err
	}
	if len(loader.undescribed) > 0 {
		var lines []string
		for name, at := range loader.undescribed {
			lines = append(lines, fmt.Sprintf("  %s (%s)", name, at))
		}
		sort.Strings(lines)
		return nil, fmt.Errorf("types from outside the runner's module, to describe in externalTypes:\n%s",
			strings.Join(lines, "\n"))
	}
	if runners := tree.Table["runners"]; runners == nil || runners.Array == nil || runners.Array.Table == nil {
		return nil, errors.New("Config has no [[runners]] array of tables")
	}
	return tree, nil
}

// Document is the file the settings read.
type Document struct {
	RunnerVersion string `json:"runner_version"`
	Source        string `json:"source"`
	Keys          int    `json:"keys"`
	Tree          *Node  `json:"tree"`
}

func main() {
	src := flag.String("src", "", "the gitlab-runner source tree at the release tag")
	version := flag.String("version", "", "the runner release, such as 18.9.0")
	out := flag.String("o", "", "the file to write (default: standard output)")
	flag.Parse()
	if *src == "" || *version == "" {
		fmt.Fprintln(os.Stderr, "usage: config-keys -src <gitlab-runner tree> -version <x.y.z> [-o file]")
		os.Exit(2)
	}
	tree, err := Tree(*src)
	if err != nil {
		fmt.Fprintln(os.Stderr, "config-keys:", err)
		os.Exit(1)
	}
	document := Document{
		RunnerVersion: *version,
		Source:        "gitlab-runner v" + *version + ", common/config.go: Config, [[runners]] RunnerConfig",
		Keys:          tree.Keys(),
		Tree:          tree,
	}
	data, err := json.Marshal(document)
	if err != nil {
		fmt.Fprintln(os.Stderr, "config-keys:", err)
		os.Exit(1)
	}
	data = append(data, '\n')
	if *out == "" {
		_, err = os.Stdout.Write(data)
	} else {
		err = os.WriteFile(*out, data, 0o644)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "config-keys:", err)
		os.Exit(1)
	}
	fmt.Fprintf(os.Stderr, "config-keys: %d keys of gitlab-runner v%s\n", document.Keys, *version)
}
