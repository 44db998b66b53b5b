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
//   - `verify` checks each runner of a config file with POST /api/v4/runners/verify and fails when
//     GitLab refuses one, as the real verify does without --delete;
//   - `fleeting --config <file> install` "installs" the fleeting plugins the file's autoscaler runners
//     name: it records each pinned reference under FLEETING_PLUGIN_PATH instead of pulling the plugin
//     from its OCI registry (none is reachable on the project's machines);
//   - `--version` and `list` answer as the real ones do (list prints tokens, as the real one does).
//
// Docker-executor runners poll like the others but fail any job they are handed: running job
// containers is beyond this double.
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
