package main

import (
	"path/filepath"
	"strings"
	"testing"

	pulumirpc "github.com/pulumi/pulumi/sdk/v3/proto/go"
	"google.golang.org/protobuf/types/known/structpb"
)

func programInfo(t *testing.T, root string, options map[string]any) *pulumirpc.ProgramInfo {
	t.Helper()
	opts, err := structpb.NewStruct(options)
	if err != nil {
		t.Fatal(err)
	}
	return &pulumirpc.ProgramInfo{RootDirectory: root, ProgramDirectory: root, EntryPoint: ".", Options: opts}
}

func TestPythonToolchainUsesTheProjectVirtualenv(t *testing.T) {
	root := t.TempDir()
	tc, err := pythonToolchain(programInfo(t, root, map[string]any{"toolchain": "pip", "virtualenv": "venv"}))
	if err != nil {
		t.Fatal(err)
	}
	venv, err := tc.VirtualEnvPath(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if venv != filepath.Join(root, "venv") {
		t.Fatalf("virtualenv resolved to %q, want %q", venv, filepath.Join(root, "venv"))
	}
	// No virtualenv has been created there: Run must say so instead of running the wrong Python.
	if err := tc.ValidateVenv(t.Context()); err == nil {
		t.Fatal("ValidateVenv accepted a virtualenv that does not exist")
	}
}

func TestPythonToolchainRefusesOtherToolchains(t *testing.T) {
	_, err := pythonToolchain(programInfo(t, t.TempDir(), map[string]any{"toolchain": "poetry"}))
	if err == nil || !strings.Contains(err.Error(), "only pip is supported") {
		t.Fatalf("want a clear refusal of poetry, got %v", err)
	}
}

func TestStreamWriterCopiesWhatItSends(t *testing.T) {
	var sent [][]byte
	w := &streamWriter{send: func(b []byte) error { sent = append(sent, b); return nil }}
	buf := []byte("first")
	if _, err := w.Write(buf); err != nil {
		t.Fatal(err)
	}
	copy(buf, "XXXXX") // the caller reuses its buffer, as io.Copy does
	if string(sent[0]) != "first" {
		t.Fatalf("the stream kept a reference to the caller's buffer: %q", sent[0])
	}
}
