package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

type jobPayload struct {
	ID      int64  `json:"id"`
	Token   string `json:"token"`
	JobInfo struct {
		Name        string `json:"name"`
		ProjectID   int64  `json:"project_id"`
		ProjectName string `json:"project_name"`
	} `json:"job_info"`
	GitInfo struct {
		RepoURL   string `json:"repo_url"`
		Ref       string `json:"ref"`
		Sha       string `json:"sha"`
		BeforeSha string `json:"before_sha"`
	} `json:"git_info"`
	RunnerInfo struct {
		Timeout int `json:"timeout"`
	} `json:"runner_info"`
	Image struct {
		Name       string   `json:"name"`
		Entrypoint []string `json:"entrypoint"`
		PullPolicy []string `json:"pull_policy"`
	} `json:"image"`
	Variables []struct {
		Key   string `json:"key"`
		Value string `json:"value"`
	} `json:"variables"`
	Steps []struct {
		Name    string   `json:"name"`
		Script  []string `json:"script"`
		Timeout int      `json:"timeout"`
	} `json:"steps"`
	Credentials []struct {
		Type     string `json:"type"`
		URL      string `json:"url"`
		Username string `json:"username"`
		Password string `json:"password"`
	} `json:"credentials"`

	// slot is the build's ProjectRunnerID: the lowest number no other running build of the same runner
	// and project holds (the "concurrent-<n>" of job resource names).
	slot int
}

func (job *jobPayload) variable(key string) string {
	for _, variable := range job.Variables {
		if variable.Key == key {
			return variable.Value
		}
	}
	return ""
}

// trace collects a job's log and sends it to GitLab in increments, as the runner does.
type trace struct {
	mu   sync.Mutex
	data bytes.Buffer
	sent int
}

func (t *trace) Write(p []byte) (int, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.data.Write(p)
}

func (t *trace) flush(api *client, job *jobPayload, runnerToken string) {
	t.mu.Lock()
	pending := append([]byte(nil), t.data.Bytes()[t.sent:]...)
	start := t.sent
	t.mu.Unlock()
	if len(pending) == 0 {
		return
	}
	header := http.Header{
		"JOB-TOKEN":     {job.Token},
		"Content-Range": {fmt.Sprintf("%d-%d", start, start+len(pending)-1)},
		"Content-Type":  {"text/plain"},
	}
	answer, err := api.do(http.MethodPatch, fmt.Sprintf("jobs/%d/trace?debug_trace=false", job.ID), header, pending, "patch_trace", runnerToken)
	if err != nil {
		logf("ERROR", "Appending trace to coordinator... error job=%d: %v", job.ID, err)
		return
	}
	switch answer.status {
	case http.StatusAccepted:
		t.mu.Lock()
		t.sent = start + len(pending)
		t.mu.Unlock()
	case http.StatusRequestedRangeNotSatisfiable:
		// The server says where it is: resend from there.
		if _, end, ok := strings.Cut(answer.header.Get("Range"), "-"); ok {
			if offset, err := strconv.Atoi(end); err == nil {
				t.mu.Lock()
				t.sent = offset
				t.mu.Unlock()
			}
		}
	default:
		logf("WARNING", "Appending trace to coordinator... failed job=%d status=%d", job.ID, answer.status)
	}
}

func (m *manager) process(api *client, config *Config, runner RunnerConfig, job *jobPayload) {
	log := &trace{}
	fmt.Fprintf(log, "Running with gitlab-runner %s (stand-in)\n  on %s %s, system ID: %s\n", version, runner.Name, shortToken(runner.Token), m.systemID)
	stop := make(chan struct{})
	flushed := make(chan struct{})
	go func() {
		defer close(flushed)
		ticker := time.NewTicker(time.Second)
		defer ticker.Stop()
		for {
			select {
			case <-ticker.C:
				log.flush(api, job, runner.Token)
			case <-stop:
				return
			}
		}
	}()

	state, reason, code := "success", "", 0
	var err error
	switch runner.Executor {
	case "shell":
		err = m.runShell(config, runner, job, log)
	case "docker":
		var status int
		if status, err = m.runDocker(config, runner, job, log); err == nil && status != 0 {
			err = scriptFailure(status)
		}
	case "kubernetes":
		var status int
		if status, err = m.runKubernetes(config, runner, job, log); err == nil && status != 0 {
			err = scriptFailure(status)
		}
	default:
		err = fmt.Errorf("the %s executor runs no jobs in this test double (stand-in)", runner.Executor)
	}
	var exit *exec.ExitError
	var failed scriptFailure
	switch {
	case err == nil:
		fmt.Fprintln(log, "Job succeeded")
	case errors.As(err, &exit) && m.abort.Err() == nil:
		fmt.Fprintf(log, "ERROR: Job failed: exit status %d\n", exit.ExitCode())
		state, reason, code = "failed", "script_failure", exit.ExitCode()
	case errors.As(err, &failed) && m.abort.Err() == nil:
		fmt.Fprintf(log, "ERROR: Job failed: exit code %d\n", int(failed))
		state, reason, code = "failed", "script_failure", int(failed)
	default:
		fmt.Fprintf(log, "ERROR: Job failed (system failure): %v\n", err)
		state, reason, code = "failed", "runner_system_failure", 1
	}
	close(stop)
	<-flushed
	log.flush(api, job, runner.Token)
	m.finish(api, runner, job, log, state, reason, code)
	logf("INFO", "Job %s duration_s=? job=%d runner=%s", state, job.ID, shortToken(runner.Token))
}

func (m *manager) finish(api *client, runner RunnerConfig, job *jobPayload, log *trace, state, reason string, code int) {
	log.mu.Lock()
	data := append([]byte(nil), log.data.Bytes()...)
	log.mu.Unlock()
	checksum := fmt.Sprintf("crc32:%08x", crc32.ChecksumIEEE(data))
	body, _ := json.Marshal(map[string]any{
		"info":           runnerInfo(runner.Executor),
		"token":          job.Token,
		"state":          state,
		"failure_reason": reason,
		"checksum":       checksum,
		"output":         map[string]any{"checksum": checksum, "bytesize": len(data)},
		"exit_code":      code,
	})
	header := http.Header{"Content-Type": {"application/json"}, "JOB-TOKEN": {job.Token}}
	for attempt := 0; attempt < 30; attempt++ {
		answer, err := api.do(http.MethodPut, fmt.Sprintf("jobs/%d", job.ID), header, body, "update_job", runner.Token)
		if err == nil && answer.status == http.StatusOK {
			return
		}
		if err == nil && answer.status != http.StatusAccepted {
			logf("ERROR", "Updating job... failed job=%d status=%d", job.ID, answer.status)
			return
		}
		time.Sleep(time.Second)
	}
}

// scriptFailure is a job script's non-zero exit code in a container.
type scriptFailure int

func (f scriptFailure) Error() string { return fmt.Sprintf("exit code %d", int(f)) }

// runShell runs the job's script with the shell executor: as --user, in a build folder under
// --working-directory, with the job's variables as its environment.
func (m *manager) runShell(config *Config, runner RunnerConfig, job *jobPayload, log *trace) error {
	timeout := time.Duration(job.RunnerInfo.Timeout) * time.Second
	if timeout <= 0 {
		timeout = time.Hour
	}
	ctx, cancel := context.WithTimeout(m.abort, timeout)
	defer cancel()

	workDir := m.opts["working-directory"]
	if workDir == "" {
		workDir, _ = os.Getwd()
	}
	buildDir := filepath.Join(workDir, "builds", shortToken(runner.Token), strconv.FormatInt(job.ID, 10))
	if err := os.MkdirAll(buildDir, 0o755); err != nil {
		return err
	}
	shell := "/bin/sh"
	if _, err := os.Stat("/bin/bash"); err == nil {
		shell = "/bin/bash"
	}
	command := exec.CommandContext(ctx, shell, "-c", jobScript(job))
	command.Dir = buildDir
	command.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "CI=true",
		fmt.Sprintf("CI_JOB_ID=%d", job.ID), "CI_SERVER_URL=" + runner.URL, "CI_BUILDS_DIR=" + filepath.Join(workDir, "builds")}
	for _, variable := range job.Variables {
		command.Env = append(command.Env, variable.Key+"="+variable.Value)
	}
	command.Stdout, command.Stderr = log, log
	// A job runs in a process group of its own, as the real runner starts it: signals meant for the
	// runner (dumb-init forwards them to the runner's group) do not reach the job.
	command.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if user := m.opts["user"]; user != "" && os.Geteuid() == 0 {
		uid, gid, home, err := lookupUser(user)
		if err != nil {
			return err
		}
		_ = os.Chown(buildDir, int(uid), int(gid))
		command.Env = append(command.Env, "HOME="+home, "USER="+user)
		command.SysProcAttr.Credential = &syscall.Credential{Uid: uid, Gid: gid}
	}
	command.Cancel = func() error { return syscall.Kill(-command.Process.Pid, syscall.SIGKILL) }
	return command.Run()
}

func lookupUser(name string) (uint32, uint32, string, error) {
	file, err := os.Open("/etc/passwd")
	if err != nil {
		return 0, 0, "", err
	}
	defer file.Close()
	scanner := bufio.NewScanner(file)
	for scanner.Scan() {
		fields := strings.Split(scanner.Text(), ":")
		if len(fields) >= 6 && fields[0] == name {
			uid, _ := strconv.Atoi(fields[2])
			gid, _ := strconv.Atoi(fields[3])
			return uint32(uid), uint32(gid), fields[5], nil
		}
	}
	return 0, 0, "", fmt.Errorf("user %s not found", name)
}
