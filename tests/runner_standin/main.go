// Command gitlab-runner is a TEST DOUBLE of GitLab Runner, not GitLab Runner.
//
// The real binary cannot be built on the project's machines (its gitlab.com dependencies are refused
// by the module proxy), so the end-to-end tests install this program as /usr/bin/gitlab-runner in a
// locally built base image laid out like the official one. It does what the real runner does with
// what gitlab-runners hands it, following the runner's own source (commands/multi.go,
// commands/register.go, network/gitlab.go at v18.5.0):
//
//   - `run` reads config.toml strictly (a file it cannot decode stops it at start; a bad reload keeps
//     the last good configuration), re-reads it within 3 s of a change, polls POST /api/v4/jobs/request
//     for each runner with its token and the system id kept in .runner_system_id, runs shell-executor
//     jobs and sends their trace and result, rotates a token at 75% of its lifetime when config.toml
//     carries token_expires_at, serves Prometheus metrics on listen_address, and on SIGQUIT stops
//     taking jobs and finishes the running ones before it exits;
//   - `register` with a glrt- token verifies it (POST /api/v4/runners/verify) and appends the runner's
//     credentials to a config file, as the real register does for runner authentication tokens;
//   - `verify` checks each runner of a config file with POST /api/v4/runners/verify and fails only
//     when GitLab answers 403 (a transport or TLS error, or a 5xx, passes), as the real verify does
//     without --delete;
//   - `fleeting --config <file> install` "installs" the fleeting plugins the file's autoscaler runners
//     name: it completes each reference as the runner's installer does (registry.gitlab.com,
//     gitlab-org/fleeting/plugins) and writes a placeholder where the runner would find the plugin
//     under FLEETING_PLUGIN_PATH, instead of pulling it from its OCI registry (none is reachable on the
//     project's machines); a reference that names no plugin GitLab publishes fails, as the registry's
//     not found makes the real one fail (`fleeting list` checks what is installed);
//   - `--version` and `list` answer as the real ones do (list prints tokens, as the real one does).
//
// Docker-executor runners poll like the others but fail any job they are handed: running job
// containers is beyond this double.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strings"
)

// Set at build time: -ldflags "-X main.version=18.5.0".
var version = "0.0.0"

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
	return "/etc/gitlab-runner/config.toml"
}

func logf(level, format string, args ...any) {
	fmt.Fprintf(os.Stderr, "%-7s %s\n", level+":", fmt.Sprintf(format, args...))
}

// shortToken is how the real runner names a runner in logs and metrics: 9 characters after the prefix.
func shortToken(token string) string {
	for _, prefix := range []string{"glrt-t1_", "glrt-t2_", "glrt-t3_", "glrt-"} {
		if strings.HasPrefix(token, prefix) {
			token = token[len(prefix):]
			break
		}
	}
	if len(token) > 9 {
		token = token[:9]
	}
	return token
}
