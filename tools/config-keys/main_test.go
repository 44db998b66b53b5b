package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// module writes a small Go module shaped like the runner's: common.Config at its root.
func module(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	files["go.mod"] = "module example.com/runner\n\ngo 1.25\n"
	for name, text := range files {
		path := filepath.Join(root, filepath.FromSlash(name))
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root
}

const config = `package common

import (
	"time"

	"example.com/runner/common/inner"
)

type Level string

type Period struct{ text string }

func (p *Period) UnmarshalText(b []byte) error { return nil }

type Wait time.Duration

type Credentials struct {
	URL   string ` + "`toml:\"url\"`" + `
	Token string ` + "`toml:\"token\"`" + `
}

type Settings struct {
	Executor string            ` + "`toml:\"executor\"`" + `
	Docker   *Docker           ` + "`toml:\"docker,omitempty\"`" + `
	Flags    map[string]bool   ` + "`toml:\"feature_flags\"`" + `
	Executor2 string           ` + "`toml:\"-\"`" + `
	hidden   string
	Limit    string            ` + "`toml:\"limit\"`" + ` // hidden by RunnerConfig's own
}

type Docker struct {
	inner.Host
	Image   string        ` + "`toml:\"image\"`" + `
	Volumes []string      ` + "`toml:\"volumes,omitempty\"`" + `
	Wait    Wait          ` + "`toml:\"wait\"`" + `
	Timeout time.Duration ` + "`toml:\"timeout\"`" + `
	Every   Period        ` + "`toml:\"every\"`" + `
	Level   Level         ` + "`toml:\"level\"`" + `
	Untagged string
}

type RunnerConfig struct {
	Name  string ` + "`toml:\"name\"`" + `
	Limit int64  ` + "`toml:\"limit,omitzero\"`" + `
	Credentials
	Settings ` + "`toml:\",squash\"`" + `
}

type Config struct {
	Concurrent int             ` + "`toml:\"concurrent\"`" + `
	Runners    []*RunnerConfig ` + "`toml:\"runners\"`" + `
	Saver      func()          ` + "`toml:\"-\"`" + `
	Labels     map[string]string ` + "`toml:\"labels,omitempty\"`" + `
}
`

const inner = `package inner

type Host struct {
	Host      string  ` + "`toml:\"host,omitempty\"`" + `
	TLSVerify bool    ` + "`toml:\"tls_verify\"`" + `
	CPUs      float64 ` + "`toml:\"cpus\"`" + `
}
`

func TestTreeReadsTagsEmbeddingAndTypes(t *testing.T) {
	root := module(t, map[string]string{"common/config.go": config, "common/inner/host.go": inner})
	tree, err := Tree(root)
	if err != nil {
		t.Fatal(err)
	}
	data, err := json.Marshal(tree)
	if err != nil {
		t.Fatal(err)
	}
	want := `{"table":{` +
		`"concurrent":"integer",` +
		`"labels":{"map":"string"},` +
		`"runners":{"array":{"table":{` +
		`"docker":{"table":{"Untagged":"string","cpus":"float","every":"string","host":"string","image":"string",` +
		`"level":"string","timeout":"duration","tls_verify":"boolean","volumes":{"array":"string"},"wait":"integer"}},` +
		`"executor":"string","feature_flags":{"map":"boolean"},"limit":"integer","name":"string","token":"string","url":"string"}}}}}`
	if string(data) != want {
		t.Errorf("tree:\n got %s\nwant %s", data, want)
	}
	if keys := tree.Keys(); keys != 20 {
		t.Errorf("keys: got %d, want 20", keys)
	}
}

func TestAnUndescribedShapeStopsTheGenerator(t *testing.T) {
	for name, source := range map[string]string{
		"own UnmarshalTOML": strings.Replace(config, "type Level string",
			"type Level string\n\nfunc (l *Level) UnmarshalTOML(v any) error { return nil }", 1),
		"external type": strings.Replace(strings.Replace(config, `"time"`, "\"time\"\n\t\"net/url\"", 1),
			"Image   string", "Image   url.URL", 1),
	} {
		root := module(t, map[string]string{"common/config.go": source, "common/inner/host.go": inner})
		if _, err := Tree(root); err == nil || !strings.Contains(err.Error(), "describe") {
			t.Errorf("%s: want an error asking to describe the type, got %v", name, err)
		}
	}
}
