package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPluginReferencesResolveAsTheRunnersInstallerDoes(t *testing.T) {
	for ref, want := range map[string]pluginRef{
		"aws:1.0.0":     {"registry.gitlab.com", "gitlab-org/fleeting/plugins", "aws", "1.0.0"},
		"googlecloud:1": {"registry.gitlab.com", "gitlab-org/fleeting/plugins", "googlecloud", "1"},
		"azure":         {"registry.gitlab.com", "gitlab-org/fleeting/plugins", "azure", "latest"},
		"gitlab-org/fleeting/plugins/aws:1.0.0": {
			"registry.gitlab.com", "gitlab-org/fleeting/plugins", "aws", "1.0.0",
		},
		"gitlab/fleeting-plugin-aws:1.0.0": {"registry.gitlab.com", "gitlab", "fleeting-plugin-aws", "1.0.0"},
		"registry.example.com:5000/team/plugins/custom:2.1.0": {
			"registry.example.com:5000", "team/plugins", "custom", "2.1.0",
		},
	} {
		got, err := parsePluginRef(ref)
		if err != nil || got != want {
			t.Errorf("parsePluginRef(%q) = %+v, %v; want %+v", ref, got, err, want)
		}
	}
	for _, bad := range []string{"", "aws:", "/aws:1.0.0", "team//aws:1.0.0"} {
		if _, err := parsePluginRef(bad); err == nil {
			t.Errorf("parsePluginRef(%q) should fail", bad)
		}
	}
}

func TestInstallTakesOnlyWhatTheRegistryHolds(t *testing.T) {
	root := t.TempDir()
	for _, ref := range []string{"aws:1.0.0", "registry.gitlab.com/gitlab-org/fleeting/plugins/googlecloud:1.0.0"} {
		path, err := installPlugin(root, ref)
		if err != nil {
			t.Fatalf("installPlugin(%q): %v", ref, err)
		}
		if _, err := os.Stat(path); err != nil {
			t.Fatalf("installPlugin(%q) wrote nothing at %s", ref, path)
		}
	}
	want := filepath.Join(root, "registry.gitlab.com", "gitlab-org", "fleeting", "plugins", "aws", "1.0.0", "plugin")
	if _, err := os.Stat(want); err != nil {
		t.Errorf("aws:1.0.0 is not where the runner looks for it (%s)", want)
	}
	for ref, reason := range map[string]string{
		"gitlab/fleeting-plugin-aws:1.0.0":    "repository not found",
		"fleeting-plugin-aws:1.0.0":           "repository not found",
		"registry.example.com/team/aws:1.0.0": "repository not found",
		"aws:latest":                          "only exact releases",
	} {
		if _, err := installPlugin(root, ref); err == nil || !strings.Contains(err.Error(), reason) {
			t.Errorf("installPlugin(%q) = %v; want an error saying %q", ref, err, reason)
		}
	}
}
