package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
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

// fleeting handles `fleeting [--config file] install|list`.
func fleeting(args []string) error {
	opts := map[string]string{}
	var action string
	for i := 0; i < len(args); i++ {
		switch {
		case args[i] == "--config" && i+1 < len(args):
			opts["config"] = args[i+1]
			i++
		case strings.HasPrefix(args[i], "--config="):
			opts["config"] = strings.TrimPrefix(args[i], "--config=")
		case !strings.HasPrefix(args[i], "-"):
			action = args[i]
		}
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
	for _, runner := range config.Runners {
		plugin, _ := runner.Autoscaler["plugin"].(string)
		if plugin == "" {
			continue
		}
		name, version, _ := strings.Cut(plugin, ":")
		path := filepath.Join(root, name, version, "plugin")
		switch action {
		case "install":
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				return err
			}
			if err := os.WriteFile(path, []byte("stand-in for "+plugin+"\n"), 0o755); err != nil {
				return err
			}
		case "list":
			if _, err := os.Stat(path); err != nil {
				return fmt.Errorf("runner: %s, plugin: %s, error: not installed", runner.Name, plugin)
			}
		default:
			return fmt.Errorf("fleeting: %q is not implemented by this test double", action)
		}
		fmt.Printf("runner: %s, plugin: %s, path: %s\n", runner.Name, plugin, path)
	}
	return nil
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
		switch {
		case err != nil:
			logf("ERROR", "Verifying runner... failed runner=%s: %v", shortToken(runner.Token), err)
			failed++
		case verified == nil:
			logf("ERROR", "Verifying runner... is not valid runner=%s status=%d", shortToken(runner.Token), status)
			failed++
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
