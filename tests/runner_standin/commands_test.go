package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/BurntSushi/toml"
)

// fakeGitLab answers the runner's side of the API: verify (200 for known tokens, else 403 or the
// status set for all), DELETE /runners/managers (204 for known tokens), and records every request.
type fakeGitLab struct {
	*httptest.Server
	mu       sync.Mutex
	tokens   map[string]int64
	status   int
	requests []recorded
}

type recorded struct {
	Method, Path, RunnerToken string
	Body                      map[string]any
}

func newFakeGitLab(t *testing.T, tokens map[string]int64) *fakeGitLab {
	f := &fakeGitLab{tokens: tokens}
	f.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		var body map[string]any
		_ = json.Unmarshal(data, &body)
		f.mu.Lock()
		f.requests = append(f.requests, recorded{r.Method, r.URL.Path, r.Header.Get("RUNNER-TOKEN"), body})
		status := f.status
		id, known := f.tokens[body["token"].(string)]
		f.mu.Unlock()
		switch {
		case status != 0:
			w.WriteHeader(status)
		case !known:
			w.WriteHeader(http.StatusForbidden)
			_, _ = w.Write([]byte(`{"message":"403 Forbidden"}`))
		case r.Method == http.MethodPost && r.URL.Path == "/api/v4/runners/verify":
			w.Header().Set("Content-Type", "application/json")
			_, _ = w.Write([]byte(`{"id":` + jsonInt(id) + `,"token":"` + body["token"].(string) + `","token_expires_at":null}`))
		case r.Method == http.MethodDelete && r.URL.Path == "/api/v4/runners/managers":
			w.WriteHeader(http.StatusNoContent)
		default:
			w.WriteHeader(http.StatusNotFound)
		}
	}))
	t.Cleanup(f.Close)
	return f
}

func jsonInt(n int64) string { data, _ := json.Marshal(n); return string(data) }

func (f *fakeGitLab) calls() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.requests...)
}

func readTOML(t *testing.T, path string) map[string]any {
	t.Helper()
	document := map[string]any{}
	if _, err := toml.DecodeFile(path, &document); err != nil {
		t.Fatal(err)
	}
	return document
}

// The chart's register-the-runner: `register --name=... --template-config <file> --non-interactive`
// with CI_SERVER_URL, CI_SERVER_TOKEN (glrt-) and RUNNER_EXECUTOR in the environment.
func chartRegisterEnv(t *testing.T, url, token string) {
	t.Setenv("CI_SERVER_URL", url)
	t.Setenv("CI_SERVER_TOKEN", token)
	t.Setenv("RUNNER_EXECUTOR", "kubernetes")
	t.Setenv("REGISTRATION_TOKEN", "")
	t.Setenv("CONFIG_FILE", "")
}

func TestRegisterMergesTheTemplateUnderFlagsAndEnvironment(t *testing.T) {
	gitlab := newFakeGitLab(t, map[string]int64{"glrt-t1_chartrunner": 42})
	dir := t.TempDir()
	config := filepath.Join(dir, "config.toml")
	// What the chart's entrypoint copies in first: the global settings.
	if err := os.WriteFile(config, []byte("concurrent = 4\ncheck_interval = 3\nlog_level = \"info\"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".runner_system_id"), []byte("s_0123456789ab"), 0o600); err != nil {
		t.Fatal(err)
	}
	template := filepath.Join(dir, "config.template.toml")
	if err := os.WriteFile(template, []byte(`[[runners]]
name = "from-template"
url = "https://ignored.example"
token = "glrt-not-this-one"
executor = "shell"
request_concurrency = 1
limit = 4

[runners.kubernetes]
namespace = "gitlab"
image = "alpine:3.20.3"
pull_policy = ["always"]
cpu_limit = "2"

[runners.docker]
image = "dropped"

[runners.feature_flags]
FF_DISABLE_AUTOMATIC_TOKEN_ROTATION = true
`), 0o600); err != nil {
		t.Fatal(err)
	}
	chartRegisterEnv(t, gitlab.URL, "glrt-t1_chartrunner")
	t.Setenv("KUBERNETES_IMAGE", "busybox:1.36") // an environment value wins over the template's

	err := register(flags([]string{"--config", config, "--name=prod-k8s", "--template-config", template, "--non-interactive"}))
	if err != nil {
		t.Fatal(err)
	}

	document := readTOML(t, config)
	if document["concurrent"] != int64(4) || document["log_level"] != "info" {
		t.Errorf("global settings not kept: %v", document)
	}
	runners := document["runners"].([]map[string]any)
	if len(runners) != 1 {
		t.Fatalf("runners = %v", runners)
	}
	runner := runners[0]
	for key, want := range map[string]any{
		"name": "prod-k8s", "url": gitlab.URL, "token": "glrt-t1_chartrunner", "id": int64(42),
		"executor": "kubernetes", "limit": int64(4), "request_concurrency": int64(1),
	} {
		if runner[key] != want {
			t.Errorf("%s = %#v, want %#v", key, runner[key], want)
		}
	}
	kube := runner["kubernetes"].(map[string]any)
	if kube["namespace"] != "gitlab" || kube["image"] != "busybox:1.36" || kube["cpu_limit"] != "2" {
		t.Errorf("kubernetes section = %v", kube)
	}
	if policies := kube["pull_policy"].([]any); len(policies) != 1 || policies[0] != "always" {
		t.Errorf("pull_policy = %v", kube["pull_policy"])
	}
	if _, ok := runner["docker"]; ok {
		t.Errorf("another executor's section was kept: %v", runner["docker"])
	}
	if runner["feature_flags"].(map[string]any)["FF_DISABLE_AUTOMATIC_TOKEN_ROTATION"] != true {
		t.Errorf("feature flags = %v", runner["feature_flags"])
	}
	if _, ok := runner["token_obtained_at"]; !ok {
		t.Error("no token_obtained_at")
	}
	calls := gitlab.calls()
	if len(calls) != 1 || calls[0].Path != "/api/v4/runners/verify" || calls[0].Body["system_id"] != "s_0123456789ab" ||
		calls[0].RunnerToken != "glrt-t1_chartrunner" {
		t.Errorf("calls = %+v", calls)
	}
	// The file the real runner would write loads in the stand-in's own strict reader.
	if _, _, err := loadConfig(config); err != nil {
		t.Error(err)
	}
}

func TestRegisterRefusesServerSideSettingsWithARunnerToken(t *testing.T) {
	gitlab := newFakeGitLab(t, map[string]int64{"glrt-t1_chartrunner": 42})
	chartRegisterEnv(t, gitlab.URL, "glrt-t1_chartrunner")
	config := filepath.Join(t.TempDir(), "config.toml")
	err := register(flags([]string{"--config", config, "--maximum-timeout=3600", "--non-interactive"}))
	if err == nil || !strings.Contains(err.Error(), "reserved") {
		t.Fatalf("err = %v", err)
	}
	if len(gitlab.calls()) != 0 {
		t.Error("GitLab was asked although the arguments were refused")
	}
}

func TestRegisterFailsOnARefusedToken(t *testing.T) {
	gitlab := newFakeGitLab(t, map[string]int64{})
	chartRegisterEnv(t, gitlab.URL, "glrt-t1_unknown")
	config := filepath.Join(t.TempDir(), "config.toml")
	err := register(flags([]string{"--config", config, "--non-interactive"}))
	if err == nil || err.Error() != "Failed to verify the runner." {
		t.Fatalf("err = %v", err)
	}
	if _, statErr := os.Stat(config); statErr == nil {
		t.Error("a config file was written")
	}
}

func TestRegisterLeavesAgainWhenItFailsAfterVerifying(t *testing.T) {
	gitlab := newFakeGitLab(t, map[string]int64{"glrt-t1_chartrunner": 42})
	chartRegisterEnv(t, gitlab.URL, "glrt-t1_chartrunner")
	t.Setenv("RUNNER_EXECUTOR", "no-such-executor")
	config := filepath.Join(t.TempDir(), "config.toml")
	err := register(flags([]string{"--config", config, "--non-interactive"}))
	if err == nil || err.Error() != "Invalid executor specified" {
		t.Fatalf("err = %v", err)
	}
	calls := gitlab.calls()
	if len(calls) != 2 || calls[1].Method != http.MethodDelete || calls[1].Path != "/api/v4/runners/managers" {
		t.Errorf("calls = %+v", calls)
	}
}

func writeRunners(t *testing.T, url string, tokens ...string) string {
	t.Helper()
	dir := t.TempDir()
	var text strings.Builder
	text.WriteString("concurrent = 2\n")
	for i, token := range tokens {
		text.WriteString("\n[[runners]]\nname = \"r" + string(rune('a'+i)) + "\"\nurl = \"" + url + "\"\ntoken = \"" + token + "\"\nexecutor = \"kubernetes\"\n")
	}
	path := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(path, []byte(text.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, ".runner_system_id"), []byte("s_feedfacecafe"), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestUnregisterAllRunnersLeavesAsRunnerManagers(t *testing.T) {
	gitlab := newFakeGitLab(t, map[string]int64{"glrt-t1_first": 1})
	t.Setenv("CI_SERVER_TOKEN", "")
	config := writeRunners(t, gitlab.URL, "glrt-t1_first", "glrt-t1_refused")

	// The chart's preStop hook: `/entrypoint unregister --all-runners`; a refusal is logged, not fatal.
	if err := unregister(flags([]string{"--config", config, "--all-runners"})); err != nil {
		t.Fatal(err)
	}
	calls := gitlab.calls()
	if len(calls) != 2 {
		t.Fatalf("calls = %+v", calls)
	}
	for _, call := range calls {
		if call.Method != http.MethodDelete || call.Path != "/api/v4/runners/managers" || call.Body["system_id"] != "s_feedfacecafe" {
			t.Errorf("call = %+v", call)
		}
	}
	if calls[0].Body["token"] != "glrt-t1_first" || calls[0].RunnerToken != "glrt-t1_first" {
		t.Errorf("first call = %+v", calls[0])
	}
	runners := readTOML(t, config)["runners"].([]map[string]any)
	if len(runners) != 1 || runners[0]["token"] != "glrt-t1_refused" {
		t.Errorf("runners left = %v", runners)
	}
}

func TestUnregisterOneRunnerFailsWhenRefused(t *testing.T) {
	gitlab := newFakeGitLab(t, map[string]int64{})
	t.Setenv("CI_SERVER_TOKEN", "")
	config := writeRunners(t, gitlab.URL, "glrt-t1_refused")
	if err := unregister(flags([]string{"--config", config, "--name", "ra"})); err == nil {
		t.Fatal("no error")
	}
	if err := unregister(flags([]string{"--config", config})); err == nil || !strings.Contains(err.Error(), "--name or --token") {
		t.Fatalf("err = %v", err)
	}
}

func TestVerifyFailsOnlyWhenGitLabRefuses(t *testing.T) {
	gitlab := newFakeGitLab(t, map[string]int64{"glrt-t1_good": 1})
	t.Setenv("CI_SERVER_TOKEN", "")
	// check-live passes `--url=` to select every runner whatever CI_SERVER_URL says.
	t.Setenv("CI_SERVER_URL", "https://elsewhere.example")
	good := writeRunners(t, gitlab.URL, "glrt-t1_good")
	if err := verify(flags([]string{"--config", good, "--url="})); err != nil {
		t.Errorf("valid runner: %v", err)
	}
	refused := writeRunners(t, gitlab.URL, "glrt-t1_good", "glrt-t1_revoked")
	if err := verify(flags([]string{"--config", refused, "--url="})); err == nil || err.Error() != "Failed to verify runners" {
		t.Errorf("revoked runner: %v", err)
	}
	// Without --url= the environment's CI_SERVER_URL selects, and matches nothing here.
	if err := verify(flags([]string{"--config", good})); err == nil || !strings.Contains(err.Error(), "no runner matches") {
		t.Errorf("selector: %v", err)
	}
	gitlab.mu.Lock()
	gitlab.status = http.StatusBadGateway
	gitlab.mu.Unlock()
	if err := verify(flags([]string{"--config", refused, "--url="})); err != nil {
		t.Errorf("a 502 is not a refusal: %v", err)
	}
	gitlab.Close()
	if err := verify(flags([]string{"--config", refused, "--url="})); err != nil {
		t.Errorf("a transport error is not a refusal: %v", err)
	}
	if err := verify(flags([]string{"--config", refused, "--url=", "--delete"})); err != nil {
		t.Errorf("delete: %v", err)
	}
}

func TestVerifyDeleteDropsRefusedRunners(t *testing.T) {
	gitlab := newFakeGitLab(t, map[string]int64{"glrt-t1_good": 1})
	t.Setenv("CI_SERVER_TOKEN", "")
	t.Setenv("CI_SERVER_URL", "")
	config := writeRunners(t, gitlab.URL, "glrt-t1_good", "glrt-t1_revoked")
	if err := verify(flags([]string{"--config", config, "--delete"})); err != nil {
		t.Fatal(err)
	}
	runners := readTOML(t, config)["runners"].([]map[string]any)
	if len(runners) != 1 || runners[0]["token"] != "glrt-t1_good" {
		t.Errorf("runners = %v", runners)
	}
}

func TestDefaultConfigPathFollowsTheHomeDirectory(t *testing.T) {
	defer func(saved func() int) { getuid = saved }(getuid)
	getuid = func() int { return 100 }
	t.Setenv("CONFIG_FILE", "")
	t.Setenv("HOME", "/home/gitlab-runner")
	if got := configPath(map[string]string{}); got != "/home/gitlab-runner/.gitlab-runner/config.toml" {
		t.Errorf("config path = %s", got)
	}
	// A pod whose user has no home of its own gets HOME=/ from the runtime: the runner then looks in
	// /.gitlab-runner, not where the chart copied config.toml.
	t.Setenv("HOME", "/")
	if got := configPath(map[string]string{}); got != "/.gitlab-runner/config.toml" {
		t.Errorf("config path = %s", got)
	}
	t.Setenv("CONFIG_FILE", "/elsewhere/config.toml")
	if got := configPath(map[string]string{}); got != "/elsewhere/config.toml" {
		t.Errorf("config path = %s", got)
	}
	getuid = func() int { return 0 }
	if got := configPath(map[string]string{"config": "/x.toml"}); got != "/x.toml" {
		t.Errorf("config path = %s", got)
	}
	t.Setenv("CONFIG_FILE", "")
	if got := configPath(map[string]string{}); got != "/etc/gitlab-runner/config.toml" {
		t.Errorf("config path = %s", got)
	}
}

func TestShortToken(t *testing.T) {
	for token, want := range map[string]string{
		"glrt-t1_AbCdEfGhIjKl": "AbCdEfGhI", "glrt-abcdefghijkl": "abcdefghi", "t2_abcdefghijk": "abcdefghi",
		"glrtr-abcdefghijk": "abcdefghi", "GR1348941abcdefghijk": "abcdefghi", "short": "short",
	} {
		if got := shortToken(token); got != want {
			t.Errorf("shortToken(%q) = %q, want %q", token, got, want)
		}
	}
}
