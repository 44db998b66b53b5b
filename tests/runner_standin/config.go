package main

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
)

// Config holds the config.toml keys gitlab-runners renders, with the real runner's names and types,
// so a value of the wrong type fails to decode here as it does there.
type Config struct {
	Concurrent      int            `toml:"concurrent"`
	CheckInterval   int            `toml:"check_interval"`
	ShutdownTimeout int            `toml:"shutdown_timeout"`
	LogLevel        string         `toml:"log_level"`
	ListenAddress   string         `toml:"listen_address"`
	Runners         []RunnerConfig `toml:"runners"`
}

type RunnerConfig struct {
	Name               string         `toml:"name"`
	URL                string         `toml:"url"`
	ID                 int64          `toml:"id"`
	Token              string         `toml:"token"`
	TokenObtainedAt    time.Time      `toml:"token_obtained_at"`
	TokenExpiresAt     time.Time      `toml:"token_expires_at"`
	TLSCAFile          string         `toml:"tls-ca-file"`
	Executor           string         `toml:"executor"`
	Limit              int            `toml:"limit"`
	RequestConcurrency int            `toml:"request_concurrency"`
	Docker             map[string]any `toml:"docker"`
	Kubernetes         map[string]any `toml:"kubernetes"`
	Cache              map[string]any `toml:"cache"`
	Autoscaler         map[string]any `toml:"autoscaler"`
	Environment        []string       `toml:"environment"`
	FeatureFlags       map[string]any `toml:"feature_flags"`
}

var knownExecutors = map[string]bool{
	"shell": true, "docker": true, "docker-autoscaler": true, "instance": true, "kubernetes": true,
}

func loadConfig(path string) (*Config, time.Time, error) {
	info, err := os.Stat(path)
	if os.IsNotExist(err) {
		return &Config{}, time.Time{}, nil
	} else if err != nil {
		return nil, time.Time{}, err
	}
	var config Config
	meta, err := toml.DecodeFile(path, &config)
	if err != nil {
		return nil, time.Time{}, fmt.Errorf("decoding configuration file: %w", err)
	}
	for _, key := range meta.Undecoded() {
		logf("WARNING", "unknown key %s in %s", key.String(), path)
	}
	for _, runner := range config.Runners {
		switch {
		case runner.Name == "" || runner.URL == "" || runner.Token == "":
			return nil, time.Time{}, fmt.Errorf("invalid config: runner %q needs name, url and token", runner.Name)
		case !knownExecutors[runner.Executor]:
			return nil, time.Time{}, fmt.Errorf("invalid config: runner %s: unknown executor %q", runner.Name, runner.Executor)
		}
	}
	return &config, info.ModTime(), nil
}

// systemID is the runner's machine identity, kept next to config.toml as the real runner keeps it.
func systemID(configFile string) (string, error) {
	path := filepath.Join(filepath.Dir(configFile), ".runner_system_id")
	if data, err := os.ReadFile(path); err == nil {
		if id := strings.TrimSpace(string(data)); id != "" {
			return id, nil
		}
	}
	raw := make([]byte, 6)
	if _, err := rand.Read(raw); err != nil {
		return "", err
	}
	id := "s_" + hex.EncodeToString(raw)
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	return id, os.WriteFile(path, []byte(id), 0o600)
}

// saveCredentials rewrites one runner's credentials in config.toml, keeping every other key, the way
// the real runner saves its config after a token reset.
func saveCredentials(path, token, newToken string, obtained, expires time.Time) error {
	document, err := readDocument(path)
	if err != nil {
		return err
	}
	runners, _ := document["runners"].([]map[string]any)
	found := false
	for _, runner := range runners {
		if runner["token"] == token {
			runner["token"] = newToken
			runner["token_obtained_at"] = obtained
			runner["token_expires_at"] = expires
			found = true
		}
	}
	if !found {
		return fmt.Errorf("no runner with that token in %s", path)
	}
	return writeDocument(path, document)
}

// featureFlag is RunnerSettings.IsFeatureFlagOn for the flags this double knows (all off by default):
// [runners.feature_flags] of config.toml.
func (r RunnerConfig) featureFlag(name string) bool {
	on, _ := r.FeatureFlags[name].(bool)
	return on
}
