package main

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
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

// setting is one option of a command in urfave/cli's order: the flag on the command line under any of
// its names (present but empty counts: `verify --url=` clears CI_SERVER_URL), else its environment
// variable.
func setting(opts map[string]string, env string, names ...string) string {
	for _, name := range names {
		if value, ok := opts[name]; ok {
			return value
		}
	}
	if env != "" {
		return os.Getenv(env)
	}
	return ""
}

func isTrue(value string) bool {
	on, err := strconv.ParseBool(value)
	return err == nil && on
}

// isRunnerToken is network.TokenIsCreatedRunnerToken: a runner authentication token.
func isRunnerToken(token string) bool { return strings.HasPrefix(token, "glrt-") }

// verifyOutcome is network/gitlab.go's VerifyRunner seen from the commands: only a 403 makes a runner
// invalid (nil there); a transport or TLS error, a 5xx or any other answer comes back as an empty,
// non-nil response (ID 0), which `verify` accepts and `register` refuses.
func verifyOutcome(runner RunnerConfig, configFile, systemID string) (*verifyResponse, bool) {
	label := fmt.Sprintf("runner=%s", shortToken(runner.Token))
	api, err := newClient(runner, configFile, systemID, nil)
	if err != nil {
		logf("ERROR", "Verifying runner... client error %s status=%q", label, err.Error())
		return &verifyResponse{}, true
	}
	verified, status, err := api.verify(runner.Token)
	switch {
	case err != nil:
		logf("ERROR", "Verifying runner... client error %s status=%q", label, err.Error())
		return &verifyResponse{}, true
	case status == http.StatusOK && isRunnerToken(runner.Token):
		logf("INFO", "Verifying runner... is valid %s", label)
		return verified, true
	case status == http.StatusOK:
		logf("INFO", "Verifying runner... is alive %s", label)
		return verified, true
	case status == http.StatusForbidden && isRunnerToken(runner.Token):
		logf("INFO", "Verifying runner... is not valid %s", label)
		return nil, false
	case status == http.StatusForbidden:
		logf("ERROR", "Verifying runner... is removed %s status=\"403 Forbidden\"", label)
		return nil, false
	default:
		logf("ERROR", "Verifying runner... failed %s status=\"%d %s\"", label, status, http.StatusText(status))
		return &verifyResponse{}, true
	}
}

// verify is commands/verify.go: every runner of the config file (or those --name, --url or --token
// select) is verified, and the command fails only when GitLab refuses one (403); with --delete the
// refused runners leave the file instead.
func verify(opts map[string]string) error {
	path := configPath(opts)
	name := setting(opts, "", "name", "n")
	url := setting(opts, "CI_SERVER_URL", "url", "u")
	token := setting(opts, "CI_SERVER_TOKEN", "token", "t")
	selector := name != "" || url != "" || token != ""
	config, _, err := loadConfig(path)
	if err != nil {
		return err
	}
	id, err := systemID(path)
	if err != nil {
		return err
	}
	matched := 0
	refused := map[string]bool{}
	for _, runner := range config.Runners {
		if selector && runner.Name != name && !sameCredentials(runner, url, token) {
			continue
		}
		matched++
		if _, valid := verifyOutcome(runner, path, id); !valid {
			refused[runner.Token] = true
		}
	}
	if selector && matched == 0 {
		return fmt.Errorf("no runner matches the filtering parameters")
	}
	if len(refused) == 0 {
		return nil
	}
	if !isTrue(setting(opts, "", "delete")) {
		return fmt.Errorf("Failed to verify runners")
	}
	if err := removeRunners(path, refused); err != nil {
		return fmt.Errorf("Failed to update %s %w", path, err)
	}
	logf("INFO", "Updated %s", path)
	return nil
}

// sameCredentials is RunnerCredentials.SameAs: the same token, and the same URL unless either is a
// wildcard ("" or "*").
func sameCredentials(runner RunnerConfig, url, token string) bool {
	if runner.Token != token {
		return false
	}
	return url == "" || url == "*" || runner.URL == "" || runner.URL == "*" || runner.URL == url
}

// unregister is commands/unregister.go. A runner authentication token (glrt-) leaves as a runner
// manager (DELETE /api/v4/runners/managers with the token and this machine's system id); a legacy
// token deletes its runner (DELETE /api/v4/runners). With --all-runners a failure is logged, the runner
// stays in the file and the command still succeeds; for one runner (--name and/or --token) it fails.
func unregister(opts map[string]string) error {
	path := configPath(opts)
	config, _, err := loadConfig(path)
	if err != nil {
		return fmt.Errorf("failed to unregister runner: %w", err)
	}
	id, err := systemID(path)
	if err != nil {
		return fmt.Errorf("failed to unregister runner: loading system ID file: %w", err)
	}
	gone := map[string]bool{}
	if isTrue(setting(opts, "", "all-runners")) {
		logf("WARNING", "Unregistering all runners")
		var failed []string
		for _, runner := range config.Runners {
			if leave(runner, path, id) {
				gone[runner.Token] = true
			} else {
				failed = append(failed, fmt.Sprintf("failed to unregister runner %q", runner.Name))
			}
		}
		if len(failed) > 0 {
			logf("ERROR", "Failed to unregister runners error=%q", strings.Join(failed, "\n"))
		}
	} else {
		name := setting(opts, "", "name", "n")
		token := setting(opts, "CI_SERVER_TOKEN", "token", "t")
		var found *RunnerConfig
		for i, runner := range config.Runners {
			if (name == "" || runner.Name == name) && (token == "" || runner.Token == token) {
				found = &config.Runners[i]
				break
			}
		}
		switch {
		case name == "" && token == "":
			return fmt.Errorf("failed to unregister runner: unregister runner: at least one of --name or --token must be specified")
		case found == nil:
			return fmt.Errorf("failed to unregister runner: unregister runner: get runner by token or name: could not find a runner with the name %q or token %q", name, shortToken(token))
		case !leave(*found, path, id):
			return fmt.Errorf("failed to unregister runner: unregister runner: failed to unregister runner %q", name)
		}
		gone[found.Token] = true
	}
	if len(gone) == 0 {
		return nil
	}
	if err := removeRunners(path, gone); err != nil {
		return fmt.Errorf("Failed to update %s %w", path, err)
	}
	logf("INFO", "Updated %s", path)
	return nil
}

// leave tells GitLab a runner (manager) is going: network/gitlab.go's UnregisterRunnerManager or
// UnregisterRunner, which succeed on 204 only.
func leave(runner RunnerConfig, configFile, systemID string) bool {
	label := fmt.Sprintf("runner=%s", shortToken(runner.Token))
	api, err := newClient(runner, configFile, systemID, nil)
	if err != nil {
		logf("ERROR", "Unregistering runner from GitLab client error %s status=%q", label, err.Error())
		return false
	}
	what, path, body := "Unregistering runner from GitLab", "runners", map[string]string{"token": runner.Token}
	if isRunnerToken(runner.Token) {
		what, path = "Unregistering runner manager from GitLab", "runners/managers"
		body["system_id"] = systemID
	}
	answer, err := api.sendJSON(http.MethodDelete, path, runner.Token, body, "")
	switch {
	case err != nil:
		logf("ERROR", "%s client error %s status=%q", what, label, err.Error())
		return false
	case answer.status == http.StatusNoContent:
		logf("INFO", "%s succeeded %s", what, label)
		return true
	case answer.status == http.StatusForbidden:
		logf("ERROR", "%s forbidden %s status=\"403 Forbidden\"", what, label)
		return false
	default:
		logf("ERROR", "%s failed %s status=\"%d %s\"", what, label, answer.status, http.StatusText(answer.status))
		return false
	}
}

// knownExecutorNames are the executors register accepts (common.GetExecutorNames of a Linux build).
var knownExecutorNames = map[string]bool{
	"shell": true, "docker": true, "docker-windows": true, "docker+machine": true, "docker-autoscaler": true,
	"instance": true, "kubernetes": true, "custom": true, "ssh": true, "parallels": true, "virtualbox": true,
}

// registerSettings are the RunnerConfig options register takes from flags or the environment that
// matter to gitlab-runners: the config.toml key (a dotted path into a section), the flag names and the
// environment variable, with the runner's own names (common/config.go).
var registerSettings = []struct {
	key, kind, env string
	flags          []string
}{
	{"limit", "int", "RUNNER_LIMIT", []string{"limit"}},
	{"output_limit", "int", "RUNNER_OUTPUT_LIMIT", []string{"output-limit"}},
	{"request_concurrency", "int", "RUNNER_REQUEST_CONCURRENCY", []string{"request-concurrency"}},
	{"tls-ca-file", "string", "CI_SERVER_TLS_CA_FILE", []string{"tls-ca-file"}},
	{"tls-cert-file", "string", "CI_SERVER_TLS_CERT_FILE", []string{"tls-cert-file"}},
	{"tls-key-file", "string", "CI_SERVER_TLS_KEY_FILE", []string{"tls-key-file"}},
	{"docker.image", "string", "DOCKER_IMAGE", []string{"docker-image"}},
	{"kubernetes.host", "string", "KUBERNETES_HOST", []string{"kubernetes-host"}},
	{"kubernetes.bearer_token", "string", "KUBERNETES_BEARER_TOKEN", []string{"kubernetes-bearer_token"}},
	{"kubernetes.ca_file", "string", "KUBERNETES_CA_FILE", []string{"kubernetes-ca-file"}},
	{"kubernetes.image", "string", "KUBERNETES_IMAGE", []string{"kubernetes-image"}},
	{"kubernetes.namespace", "string", "KUBERNETES_NAMESPACE", []string{"kubernetes-namespace"}},
	{"kubernetes.namespace_per_job", "bool", "KUBERNETES_NAMESPACE_PER_JOB", []string{"kubernetes-namespace_per_job"}},
	{"kubernetes.privileged", "*bool", "KUBERNETES_PRIVILEGED", []string{"kubernetes-privileged"}},
	{"kubernetes.service_account", "string", "KUBERNETES_SERVICE_ACCOUNT", []string{"kubernetes-service-account"}},
	{"kubernetes.pull_policy", "list", "KUBERNETES_PULL_POLICY", []string{"kubernetes-pull-policy"}},
	{"kubernetes.helper_image", "string", "KUBERNETES_HELPER_IMAGE", []string{"kubernetes-helper-image"}},
	{"kubernetes.cpu_limit", "string", "KUBERNETES_CPU_LIMIT", []string{"kubernetes-cpu-limit"}},
	{"kubernetes.cpu_request", "string", "KUBERNETES_CPU_REQUEST", []string{"kubernetes-cpu-request"}},
	{"kubernetes.memory_limit", "string", "KUBERNETES_MEMORY_LIMIT", []string{"kubernetes-memory-limit"}},
	{"kubernetes.memory_request", "string", "KUBERNETES_MEMORY_REQUEST", []string{"kubernetes-memory-request"}},
	{"kubernetes.poll_interval", "int", "KUBERNETES_POLL_INTERVAL", []string{"kubernetes-poll-interval"}},
	{"kubernetes.poll_timeout", "int", "KUBERNETES_POLL_TIMEOUT", []string{"kubernetes-poll-timeout"}},
}

// runnerFromSettings is the runner register builds from its flags and environment, before the
// template: only set (non-zero) values, as mergo sees them.
func runnerFromSettings(opts map[string]string) map[string]any {
	runner := map[string]any{}
	for _, option := range registerSettings {
		raw := setting(opts, option.env, option.flags...)
		var value any
		switch option.kind {
		case "string":
			if raw != "" {
				value = raw
			}
		case "int":
			if number, err := strconv.ParseInt(raw, 10, 64); err == nil && number != 0 {
				value = number
			}
		case "bool":
			if isTrue(raw) {
				value = true
			}
		case "*bool":
			if on, err := strconv.ParseBool(raw); err == nil {
				value = on
			}
		case "list":
			if raw != "" {
				value = []any{raw}
			}
		}
		if value == nil {
			continue
		}
		table := runner
		parts := strings.Split(option.key, ".")
		for _, part := range parts[:len(parts)-1] {
			next, ok := table[part].(map[string]any)
			if !ok {
				next = map[string]any{}
				table[part] = next
			}
			table = next
		}
		table[parts[len(parts)-1]] = value
	}
	return runner
}

// mergeMissing is dario.cat/mergo's Merge without override, as register merges the template into the
// runner: a key the runner has not set takes the template's value; tables merge key by key.
func mergeMissing(dst, src map[string]any) {
	for key, value := range src {
		current, ok := dst[key]
		if !ok || isZeroValue(current) {
			dst[key] = value
			continue
		}
		if into, ok := current.(map[string]any); ok {
			if from, ok := value.(map[string]any); ok {
				mergeMissing(into, from)
			}
		}
	}
}

func isZeroValue(value any) bool {
	switch v := value.(type) {
	case nil:
		return true
	case string:
		return v == ""
	case int64:
		return v == 0
	case []any:
		return len(v) == 0
	case map[string]any:
		return len(v) == 0
	}
	return false
}

// loadTemplate reads a --template-config file as configTemplate.MergeTo does: a config file that must
// decode (with the runner's types) and hold exactly one [[runners]] entry, whose token is dropped.
func loadTemplate(path string) (map[string]any, error) {
	var typed Config
	if _, err := toml.DecodeFile(path, &typed); err != nil {
		return nil, fmt.Errorf("couldn't load configuration template file: decoding configuration file: %w", err)
	}
	var document map[string]any
	if _, err := toml.DecodeFile(path, &document); err != nil {
		return nil, fmt.Errorf("couldn't load configuration template file: decoding configuration file: %w", err)
	}
	runners, _ := document["runners"].([]map[string]any)
	if len(runners) != 1 {
		return nil, fmt.Errorf("configuration template must contain exactly one [[runners]] entry")
	}
	delete(runners[0], "token")
	return runners[0], nil
}

// register is commands/register.go run non-interactively with a runner authentication token: the
// template (--template-config) merged under the flags and environment, the token verified (POST
// /api/v4/runners/verify with this machine's system id; anything but a 200 with a runner id fails), the
// name, URL and executor taken from the flags or environment (never from the template), only the
// chosen executor's section kept, and the runner appended to the config file. A failure after the
// token verified makes the manager leave GitLab again, unless --leave-runner. Legacy registration
// tokens (POST /api/v4/runners) are beyond this double.
func register(opts map[string]string) (err error) {
	path := configPath(opts)
	accessLevel := setting(opts, "REGISTER_ACCESS_LEVEL", "access-level")
	if accessLevel != "" && accessLevel != "not_protected" && accessLevel != "ref_protected" {
		return fmt.Errorf("Given access-level is not valid. Refer to gitlab-runner register -h for the correct options.")
	}
	if !isTrue(setting(opts, "REGISTER_NON_INTERACTIVE", "non-interactive", "n")) {
		return fmt.Errorf("register: this stand-in only registers non-interactively (--non-interactive)")
	}
	runner := runnerFromSettings(opts)
	if template := setting(opts, "TEMPLATE_CONFIG_FILE", "template-config"); template != "" {
		logf("INFO", "Merging configuration from template file %q", template)
		entry, err := loadTemplate(template)
		if err != nil {
			return fmt.Errorf("Could not handle configuration merging from template file: %w", err)
		}
		mergeMissing(runner, entry)
	}
	existing, _, err := loadConfig(path)
	if err != nil {
		return err
	}
	id, err := systemID(path)
	if err != nil {
		return fmt.Errorf("mutate config: loading system ID file: %w", err)
	}

	serverURL := setting(opts, "CI_SERVER_URL", "url", "u")
	if serverURL == "" {
		return fmt.Errorf("The url needs to be entered")
	}
	token := setting(opts, "CI_SERVER_TOKEN", "token", "t")
	registrationToken := setting(opts, "REGISTRATION_TOKEN", "registration-token", "r")
	if token == "" || !isRunnerToken(token) {
		if token = registrationToken; token == "" {
			return fmt.Errorf("The registration-token needs to be entered")
		}
	}
	if !isRunnerToken(token) {
		return fmt.Errorf("register: legacy registration tokens (POST /api/v4/runners) are not implemented by this stand-in; use a runner authentication token (glrt-)")
	}
	for _, other := range existing.Runners {
		if other.Token == token {
			logf("WARNING", "A runner with this system ID and token has already been registered.")
		}
	}
	// With a runner authentication token the runner's GitLab-side settings are the server's.
	locked := setting(opts, "REGISTER_LOCKED", "locked")
	if (locked != "" && !isTrue(locked)) || accessLevel != "" || isTrue(setting(opts, "REGISTER_RUN_UNTAGGED", "run-untagged")) ||
		setting(opts, "REGISTER_MAXIMUM_TIMEOUT", "maximum-timeout") != "" || isTrue(setting(opts, "REGISTER_PAUSED", "paused")) ||
		setting(opts, "RUNNER_TAG_LIST", "tag-list") != "" || setting(opts, "REGISTER_MAINTENANCE_NOTE", "maintenance-note") != "" {
		if registrationToken != token {
			return fmt.Errorf("Runner configuration other than name and executor configuration is reserved (specifically --locked, " +
				"--access-level, --run-untagged, --maximum-timeout, --paused, --tag-list, and --maintenance-note) " +
				"and cannot be specified when registering with a runner authentication token. " +
				"This configuration is specified on the GitLab server. Please try again without specifying any of those arguments.")
		}
		logf("WARNING", "You have specified an authentication token in the legacy parameter --registration-token: "+
			"--locked, --access-level, --run-untagged, --maximum-timeout, --paused, --tag-list and --maintenance-note are ignored.")
	}

	credentials := RunnerConfig{Name: "registration", URL: serverURL, Token: token}
	credentials.TLSCAFile, _ = runner["tls-ca-file"].(string)
	verified, _ := verifyOutcome(credentials, path, id)
	if verified == nil || verified.ID == 0 {
		return fmt.Errorf("Failed to verify the runner.")
	}
	registered := true
	defer func() {
		if err != nil && registered && !isTrue(setting(opts, "REGISTER_LEAVE_RUNNER", "leave-runner")) {
			leave(credentials, path, id)
		}
	}()

	name := setting(opts, "RUNNER_NAME", "name", "description")
	if name == "" {
		name, _ = os.Hostname()
	}
	executor := setting(opts, "RUNNER_EXECUTOR", "executor")
	if !knownExecutorNames[executor] {
		return fmt.Errorf("Invalid executor specified")
	}
	// askExecutorOptions: only the chosen executor's section stays.
	keep := map[string][]string{
		"kubernetes": {"kubernetes"}, "docker": {"docker"}, "docker-autoscaler": {"docker"}, "docker-windows": {"docker"},
		"docker+machine": {"docker", "machine"}, "ssh": {"ssh"}, "parallels": {"ssh", "parallels"},
		"virtualbox": {"ssh", "virtualbox"}, "custom": {"custom"},
	}[executor]
	for _, section := range []string{"kubernetes", "machine", "docker", "ssh", "parallels", "virtualbox", "custom", "referees"} {
		if !slices.Contains(keep, section) {
			delete(runner, section)
		}
	}
	if slices.Contains(keep, "docker") {
		// askBasicDocker asks for --docker-image (DOCKER_IMAGE) whatever the template holds.
		image := setting(opts, "DOCKER_IMAGE", "docker-image")
		if image == "" {
			return fmt.Errorf("The docker-image needs to be entered")
		}
		docker, _ := runner["docker"].(map[string]any)
		if docker == nil {
			docker = map[string]any{}
			runner["docker"] = docker
		}
		docker["image"] = image
	}
	runner["name"] = name
	runner["url"] = serverURL
	runner["id"] = verified.ID
	runner["token"] = token
	runner["token_obtained_at"] = time.Now().UTC().Truncate(time.Second)
	runner["token_expires_at"] = verified.TokenExpiresAt
	runner["executor"] = executor

	document, err := readDocument(path)
	if err != nil {
		return err
	}
	if len(document) == 0 {
		document["concurrent"] = int64(1)
		document["check_interval"] = int64(0)
	}
	runners, _ := document["runners"].([]map[string]any)
	document["runners"] = append(runners, runner)
	if err := writeDocument(path, document); err != nil {
		return err
	}
	registered = false // saved: nothing to undo
	concurrent, _ := document["concurrent"].(int64)
	if limit, _ := runner["limit"].(int64); concurrent < limit {
		logf("WARNING", "The specified runner job concurrency limit (%d) is larger than current global concurrency limit (%d). "+
			"The global concurrent limit will not be increased and takes precedence.", limit, concurrent)
	}
	logf("INFO", "Runner registered successfully. Feel free to start it, but if it's running already the config should be automatically reloaded!")
	logf("INFO", "Configuration (with the authentication token) was saved in %q", path)
	return nil
}

// readDocument decodes config.toml as plain tables (every key kept), or an empty one when it is absent.
func readDocument(path string) (map[string]any, error) {
	document := map[string]any{}
	if _, err := os.Stat(path); os.IsNotExist(err) {
		return document, nil
	}
	if _, err := toml.DecodeFile(path, &document); err != nil {
		return nil, fmt.Errorf("decoding configuration file: %w", err)
	}
	return document, nil
}

// writeDocument saves config.toml as the runner's config saver does: the directory made (0700), the
// file replaced whole (0600).
func writeDocument(path string, document map[string]any) error {
	var out bytes.Buffer
	if err := toml.NewEncoder(&out).Encode(document); err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	tmp := path + ".standin-tmp"
	if err := os.WriteFile(tmp, out.Bytes(), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// removeRunners drops the runners with these tokens from the config file, keeping everything else.
func removeRunners(path string, tokens map[string]bool) error {
	document, err := readDocument(path)
	if err != nil {
		return err
	}
	runners, _ := document["runners"].([]map[string]any)
	var kept []map[string]any
	for _, runner := range runners {
		if token, _ := runner["token"].(string); !tokens[token] {
			kept = append(kept, runner)
		}
	}
	if len(kept) == 0 {
		delete(document, "runners")
	} else {
		document["runners"] = kept
	}
	return writeDocument(path, document)
}
