// Command gitlab-runner is a TEST DOUBLE of GitLab Runner, not GitLab Runner.
//
// The real binary cannot be built on the project's machines (its gitlab.com dependencies are refused
// by the module proxy), so the end-to-end tests install this program as /usr/bin/gitlab-runner in a
// locally built base image laid out like the official one (with /entrypoint calling it), so that the
// official Helm chart's own scripts run it too. It does what the real runner does with what
// gitlab-runners and the chart hand it, following the runner's own source at v18.9.0 (commands/*.go,
// common/config.go, network/gitlab.go, executors/docker, executors/kubernetes):
//
//   - `run` reads config.toml (--config, else CONFIG_FILE, else ~/.gitlab-runner/config.toml, or
//     /etc/gitlab-runner/config.toml as root) strictly (a file it cannot decode stops it at start; a
//     bad reload keeps the last good configuration), re-reads it within 3 s of a change, polls POST
//     /api/v4/jobs/request for each runner with its token and the system id kept in .runner_system_id,
//     runs jobs with the shell, docker (docker.go: the Engine API) and kubernetes (kubernetes.go: the
//     Kubernetes API with the pod's service account) executors and sends their trace and result,
//     rotates a token at 75% of its lifetime when config.toml carries token_expires_at (unless
//     FF_DISABLE_AUTOMATIC_TOKEN_ROTATION), serves Prometheus metrics on listen_address, and on SIGQUIT
//     stops taking jobs and finishes the running ones before it exits; --user and --working-directory
//     apply to shell jobs;
//   - `register --non-interactive` with a runner authentication token (glrt-, from --token or
//     CI_SERVER_TOKEN, else --registration-token or REGISTRATION_TOKEN) merges --template-config's one
//     [[runners]] entry under the flags and environment (url/CI_SERVER_URL, name/RUNNER_NAME or the
//     host name, executor/RUNNER_EXECUTOR, tls-ca-file/CI_SERVER_TLS_CA_FILE, limit, request
//     concurrency, KUBERNETES_NAMESPACE, KUBERNETES_IMAGE and the other settings in commands.go),
//     refuses --locked=false, --access-level, --run-untagged, --maximum-timeout, --paused, --tag-list
//     and --maintenance-note (reserved to GitLab with such a token), verifies the token (POST
//     /api/v4/runners/verify), keeps only the chosen executor's section and appends the runner to the
//     config file; a failure after verifying makes the manager leave again (unless --leave-runner).
//     Legacy registration tokens are not implemented;
//   - `verify` checks the runners of a config file (all, or those --name, --url or --token select; the
//     chart's `verify --url=` selects all) with POST /api/v4/runners/verify and fails only when GitLab
//     refuses one (403): transport and TLS errors and 5xx pass, as in the real one; --delete drops the
//     refused runners instead;
//   - `unregister --all-runners` (the chart's preStop hook), or one runner by --name and/or --token,
//     tells GitLab the runner manager leaves (DELETE /api/v4/runners/managers with the token and the
//     system id; DELETE /api/v4/runners for a legacy token) and removes it from the file; with
//     --all-runners a refusal is logged and the command still succeeds;
//   - `fleeting --config <file> install` "installs" the fleeting plugins the file's autoscaler runners
//     name: it completes each reference as the runner's installer does (registry.gitlab.com,
//     gitlab-org/fleeting/plugins) and writes a placeholder where the runner would find the plugin
//     under FLEETING_PLUGIN_PATH, instead of pulling it from its OCI registry (none is reachable on the
//     project's machines); a reference that names no plugin GitLab publishes fails, as the registry's
//     not found makes the real one fail (`fleeting list` checks what is installed);
//   - `--version` and `list` answer as the real ones do (list prints tokens, as the real one does).
//
// The chart's other checks need no command of their own: its readiness probe is `pgrep gitlab.*runner`
// and check-live runs pgrep and `gitlab-runner verify --url=` (procps in the base image). Each
// executor file says what it leaves out; no executor has a helper container (no helper image exists
// here), so sources, caches, artifacts and services are beyond this double.
package main

import (
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
)

// Set at build time: -ldflags "-X main.version=18.9.0".
var version = "0.0.0"

// getuid is os.Getuid, replaceable in tests.
var getuid = os.Getuid

func main() {
	args := os.Args[1:]
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "usage: gitlab-runner run|register|list|--version")
		os.Exit(2)
	}
	var err error
	switch args[0] {
	case "--version", "-v", "version":
		printVersion()
	case "list":
		err = list(flags(args[1:]))
	case "register":
		err = register(flags(args[1:]))
	case "verify":
		err = verify(flags(args[1:]))
	case "unregister":
		err = unregister(flags(args[1:]))
	case "fleeting":
		err = fleeting(args[1:])
	case "run":
		err = run(flags(args[1:]))
	default:
		fmt.Fprintf(os.Stderr, "gitlab-runner (stand-in): command %q is not implemented by this test double\n", args[0])
		os.Exit(2)
	}
	if err != nil {
		logf("FATAL", "%v", err)
		os.Exit(1)
	}
}

func printVersion() {
	fmt.Printf("Version:      %s\nGit revision: standin\nGit branch:   standin\nGO version:   %s\nBuilt:        standin\nOS/Arch:      %s/%s\n",
		version, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}

// flags parses --key=value, --key value and bare --switch into a map.
func flags(args []string) map[string]string {
	parsed := map[string]string{}
	for i := 0; i < len(args); i++ {
		arg := strings.TrimLeft(args[i], "-")
		if key, value, ok := strings.Cut(arg, "="); ok {
			parsed[key] = value
			continue
		}
		if i+1 < len(args) && !strings.HasPrefix(args[i+1], "-") {
			parsed[arg] = args[i+1]
			i++
			continue
		}
		parsed[arg] = "true"
	}
	return parsed
}

// configPath is where a command reads (and register writes) config.toml, as the real runner picks it:
// --config (-c), else CONFIG_FILE, else config.toml in the default config directory.
func configPath(opts map[string]string) string {
	if path := opts["config"]; path != "" {
		return path
	}
	if path := opts["c"]; path != "" {
		return path
	}
	if path := os.Getenv("CONFIG_FILE"); path != "" {
		return path
	}
	return filepath.Join(defaultConfigDir(), "config.toml")
}

// defaultConfigDir is commands/config_unix.go's getDefaultConfigDirectory: /etc/gitlab-runner for
// root, else ~/.gitlab-runner with the home directory from $HOME (else the user database), else the
// working directory. The certificate directory (certs/<host>.crt) lives under it too.
func defaultConfigDir() string {
	if getuid() == 0 {
		return "/etc/gitlab-runner"
	}
	home := os.Getenv("HOME")
	if home == "" {
		if current, err := user.Current(); err == nil {
			home = current.HomeDir
		}
	}
	if home != "" {
		return filepath.Join(home, ".gitlab-runner")
	}
	if dir, err := os.Getwd(); err == nil {
		return dir
	}
	return "."
}

func logf(level, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%-7s %s\n", level+":", fmt.Sprintf(format, args...))
}

// tokenPrefixes are the prefixes helpers.ShortenToken strips before it keeps 9 characters.
var tokenPrefixes = []*regexp.Regexp{
	regexp.MustCompile(`^glrt-(t[123]_)?|^t[123]_|^glrtr-`),
	regexp.MustCompile(`^glcbt-`),
	regexp.MustCompile(`^GR[0-9A-Fa-f]{7}`),
}

// shortToken is how the real runner names a runner in logs, metrics and job resource names.
func shortToken(token string) string {
	for _, prefix := range tokenPrefixes {
		token = prefix.ReplaceAllString(token, "")
	}
	if len(token) > 9 {
		token = token[:9]
	}
	return token
}
