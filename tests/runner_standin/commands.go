package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// list prints the configured runners as the real `gitlab-runner list` does: with their tokens.
func list(opts map[string]string) error {
	path := configPath(opts)
	config, _, err := loadConfig(path)
	if err != nil {
		// The real command logs the error and still exits 0.
		logf("ERROR", "%v", err)
		return nil
	}
	logf("Runtime platform", "arch=amd64 os=linux version=%s", version)
	logf("Listing configured runners", "ConfigFile=%s", path)
	for _, runner := range config.Runners {
		logf(runner.Name, "Executor=%s Token=%s URL=%s", runner.Executor, runner.Token, runner.URL)
	}
	return nil
}

// How the runner's fleeting installer completes a plugin reference (docs/fleet_scaling/fleeting.md at
// v18.9.0, and commands/fleeting/fleeting_integration_test.go, which installs "aws:0.5.0" into
// <plugin dir>/registry.gitlab.com/gitlab-org/fleeting/plugins/aws/0.5.0).
const (
	defaultPluginRegistry   = "registry.gitlab.com"
	defaultPluginRepository = "gitlab-org/fleeting/plugins"
)

// publishedPlugins are the plugin repositories this double can "pull": GitLab's official plugins. The
// real install asks the registry, which answers any other path under registry.gitlab.com (such as
// gitlab/fleeting-plugin-aws) with not found; the double has no registry to ask and refuses them all.
var publishedPlugins = map[string]bool{
	"registry.gitlab.com/gitlab-org/fleeting/plugins/aws":         true,
	"registry.gitlab.com/gitlab-org/fleeting/plugins/googlecloud": true,
	"registry.gitlab.com/gitlab-org/fleeting/plugins/azure":       true,
}

var exactRelease = regexp.MustCompile(`^[0-9]+\.[0-9]+\.[0-9]+$`)

// pluginRef is a plugin reference with the installer's defaults filled in.
type pluginRef struct {
	registry, repository, name, version string
}

func (r pluginRef) path() string { return r.registry + "/" + r.repository + "/" + r.name }

// parsePluginRef reads [registry/][repository/]name[:version]: a first part with a dot or a port (or
// localhost) is a registry, as in image references; the version defaults to latest.
func parsePluginRef(ref string) (pluginRef, error) {
	path, version := ref, "latest"
	if i := strings.LastIndex(ref, ":"); i > strings.LastIndex(ref, "/") {
		path, version = ref[:i], ref[i+1:]
	}
	parts := strings.Split(path, "/")
	for _, part := range parts {
		if part == "" || version == "" {
			return pluginRef{}, fmt.Errorf("invalid plugin reference %q", ref)
		}
	}
	r := pluginRef{registry: defaultPluginRegistry, repository: defaultPluginRepository, version: version}
	if len(parts) > 1 && (strings.ContainsAny(parts[0], ".:") || parts[0] == "localhost") {
		r.registry, parts = parts[0], parts[1:]
	}
	r.name = parts[len(parts)-1]
	if len(parts) > 1 {
		r.repository = strings.Join(parts[:len(parts)-1], "/")
	}
	return r, nil
}

// installPlugin "pulls" a plugin into root and returns the installed file's path.
func installPlugin(root, ref string) (string, error) {
	r, err := parsePluginRef(ref)
	if err != nil {
		return "", err
	}
	if !publishedPlugins[r.path()] {
		return "", fmt.Errorf("%s: repository not found (this double knows only GitLab's plugins: aws, googlecloud, azure)", r.path())
	}
	if !exactRelease.MatchString(r.version) {
		// The real one picks the newest matching tag; the double has no tags to pick from.
		return "", fmt.Errorf("%s:%s: only exact releases (1.2.3) are implemented by this test double", r.path(), r.version)
	}
	path := pluginPath(root, r)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return "", err
	}
	return path, os.WriteFile(path, []byte("stand-in for "+r.path()+":"+r.version+"\n"), 0o755)
}

func pluginPath(root string, r pluginRef) string {
	return filepath.Join(root, filepath.FromSlash(r.path()), r.version, "plugin")
}

// fleeting handles `fleeting [--config file] install|list` as commands/fleeting does: every autoscaler
// runner's plugin in turn, an error printed for each one that fails, and exit code 1 if any did.
func fleeting(args []string) error {
	opts := map[string]string{}
	var action string
	for i := 0; i < len(args); i++ {
		switch {
		case (args[i] == "--config" || args[i] == "-c") && i+1 < len(args):
			opts["config"] = args[i+1]
			i++
		case strings.HasPrefix(args[i], "--config="):
			opts["config"] = strings.TrimPrefix(args[i], "--config=")
		case !strings.HasPrefix(args[i], "-"):
			action = args[i]
		}
	}
	if action != "install" && action != "list" {
		return fmt.Errorf("fleeting: %q is not implemented by this test double", action)
	}
	config, _, err := loadConfig(configPath(opts))
	if err != nil {
		return err
	}
	root := os.Getenv("FLEETING_PLUGIN_PATH")
	if root == "" {
		home, _ := os.UserHomeDir()
		root = filepath.Join(home, ".config", "fleeting", "plugins")
	}
	failed := 0
	for _, runner := range config.Runners {
		plugin, _ := runner.Autoscaler["plugin"].(string)
		if plugin == "" {
			continue
		}
		var path string
		var err error
		if action == "install" {
			path, err = installPlugin(root, plugin)
		} else if r, parseErr := parsePluginRef(plugin); parseErr != nil {
			err = parseErr
		} else if path = pluginPath(root, r); !fileExists(path) {
			err = errors.New("plugin not found")
		}
		if err != nil {
			failed++
			// The real command's wording, its doubled colon included.
			what := map[string]string{"install": "install/update error:", "list": "error"}[action]
			fmt.Fprintf(os.Stderr, "runner: %s, plugin: %s, %s: %v\n", runner.Name, plugin, what, err)
			continue
		}
		fmt.Printf("runner: %s, plugin: %s, path: %s\n", runner.Name, plugin, path)
	}
	if failed > 0 {
		return fmt.Errorf("fleeting %s: %d plugin(s) failed", action, failed)
	}
	return nil
}

func fileExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// verify asks GitLab about every runner of the config file, with the config's TLS settings and system id.
func verify(opts map[string]string) error {
	path := configPath(opts)
	config, _, err := loadConfig(path)
	if err != nil {
		return err
	}
	id, err := systemID(path)
	if err != nil {
		return err
	}
	failed := 0
	for _, runner := range config.Runners {
		api, err := newClient(runner, path, id, nil)
		if err != nil {
			return err
		}
		verified, status, err := api.verify(runner.Token)
		// As network/gitlab.go's VerifyRunner at v18.9.0: only a 403 fails; a transport or TLS error
		// and any other status are logged and pass.
		switch {
		case err != nil:
			logf("ERROR", "Verifying runner... client error runner=%s: %v", shortToken(runner.Token), err)
		case status == http.StatusForbidden:
			logf("ERROR", "Verifying runner... is not valid runner=%s status=%d", shortToken(runner.Token), status)
			failed++
		case verified == nil:
			logf("ERROR", "Verifying runner... failed runner=%s status=%d", shortToken(runner.Token), status)
		default:
			logf("INFO", "Verifying runner... is valid runner=%s", shortToken(runner.Token))
		}
	}
	if failed > 0 {
		return fmt.Errorf("Failed to verify runners")
	}
	return nil
}

// register, with a runner authentication token, verifies it and appends the runner's credentials to
// the config file, as the real register does for glrt- tokens. It creates nothing in GitLab.
func register(opts map[string]string) error {
	path := configPath(opts)
	token := opts["token"]
	if token == "" {
		token = os.Getenv("CI_SERVER_TOKEN")
	}
	serverURL := opts["url"]
	if serverURL == "" {
		serverURL = os.Getenv("CI_SERVER_URL")
	}
	name := opts["name"]
	if name == "" {
		name = os.Getenv("RUNNER_NAME")
	}
	executor := opts["executor"]
	if executor == "" {
		executor = os.Getenv("RUNNER_EXECUTOR")
	}
	switch {
	case opts["non-interactive"] == "" && os.Getenv("REGISTER_NON_INTERACTIVE") != "true":
		return fmt.Errorf("register: this stand-in only registers non-interactively")
	case !strings.HasPrefix(token, "glrt-"):
		return fmt.Errorf("register: only runner authentication tokens (glrt-) are supported")
	case serverURL == "" || name == "" || executor == "":
		return fmt.Errorf("register: url, name and executor are required")
	}
	id, err := systemID(path)
	if err != nil {
		return err
	}
	caFile := opts["tls-ca-file"]
	if caFile == "" {
		caFile = os.Getenv("CI_SERVER_TLS_CA_FILE")
	}
	api, err := newClient(RunnerConfig{Name: name, URL: serverURL, TLSCAFile: caFile}, path, id, nil)
	if err != nil {
		return err
	}
	verified, status, err := api.verify(token)
	if err != nil {
		return err
	}
	if verified == nil {
		logf("ERROR", "Verifying runner... is not valid (status %d)", status)
		return fmt.Errorf("Failed to verify the runner.")
	}
	logf("INFO", "Verifying runner... is valid runner=%s", shortToken(token))
	document := map[string]any{}
	if _, err := os.Stat(path); err == nil {
		if _, err := toml.DecodeFile(path, &document); err != nil {
			return err
		}
	} else {
		document["concurrent"] = 1
		document["check_interval"] = 0
	}
	runners, _ := document["runners"].([]map[string]any)
	runners = append(runners, map[string]any{
		"name":              name,
		"url":               serverURL,
		"id":                verified.ID,
		"token":             token,
		"token_obtained_at": time.Now().UTC().Truncate(time.Second),
		"token_expires_at":  verified.TokenExpiresAt,
		"executor":          executor,
	})
	document["runners"] = runners
	var out bytes.Buffer
	if err := toml.NewEncoder(&out).Encode(document); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(path, out.Bytes(), 0o600); err != nil {
		return err
	}
	logf("INFO", "Runner registered successfully. Config saved at %q", path)
	return nil
}
