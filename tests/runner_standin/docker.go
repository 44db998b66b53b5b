package main

// The docker executor, as gitlab-runner v18.9.0 runs a job (executors/docker): through the Engine API
// on [runners.docker] host (else DOCKER_HOST, else the mounted socket), at the API version negotiated
// with the engine; the job image taken by the pull policy; one build container named and labelled as
// the real runner names and labels it, running the job's script; its output streamed into the job log;
// the container removed with its anonymous volumes afterwards. Not done here (a test double): the
// helper container (no helper image can be pulled here), services, caches and artifacts.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"
)

// The newest Engine API the runner's client (github.com/docker/docker v28.5.2) speaks; it negotiates
// down to an older engine's version.
const dockerClientAPI = "1.51"

type dockerEngine struct {
	http    *http.Client
	base    string
	version string
}

func dockerHost(runner RunnerConfig) string {
	if host, _ := runner.Docker["host"].(string); host != "" {
		return host
	}
	if host := os.Getenv("DOCKER_HOST"); host != "" {
		return host
	}
	return "unix:///var/run/docker.sock"
}

func connectDocker(ctx context.Context, host string) (*dockerEngine, error) {
	engine := &dockerEngine{http: &http.Client{}}
	switch {
	case strings.HasPrefix(host, "unix://"):
		path := strings.TrimPrefix(host, "unix://")
		engine.http.Transport = &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", path)
		}}
		engine.base = "http://docker"
	case strings.HasPrefix(host, "tcp://"):
		engine.base = "http://" + strings.TrimPrefix(host, "tcp://")
	default:
		return nil, fmt.Errorf("unsupported docker host %q", host)
	}
	var version struct {
		APIVersion    string `json:"ApiVersion"`
		MinAPIVersion string `json:"MinAPIVersion"`
	}
	if err := engine.call(ctx, http.MethodGet, "/version", nil, nil, &version); err != nil {
		return nil, fmt.Errorf("Cannot connect to the Docker daemon at %s: %w", host, err)
	}
	engine.version = dockerClientAPI
	if apiLess(version.APIVersion, dockerClientAPI) {
		engine.version = version.APIVersion
	}
	if version.MinAPIVersion != "" && apiLess(engine.version, version.MinAPIVersion) {
		return nil, fmt.Errorf("the engine needs Docker API %s or newer; this client speaks up to %s", version.MinAPIVersion, dockerClientAPI)
	}
	return engine, nil
}

func apiLess(a, b string) bool {
	aMajor, aMinor, _ := strings.Cut(a, ".")
	bMajor, bMinor, _ := strings.Cut(b, ".")
	x, _ := strconv.Atoi(aMajor)
	y, _ := strconv.Atoi(bMajor)
	if x != y {
		return x < y
	}
	x, _ = strconv.Atoi(aMinor)
	y, _ = strconv.Atoi(bMinor)
	return x < y
}

// call makes one API request; `out` receives the JSON answer, a status of 300 or more is an error
// carrying the engine's message.
func (d *dockerEngine) call(ctx context.Context, method, path string, query url.Values, body, out any) error {
	response, err := d.open(ctx, method, path, query, body)
	if err != nil {
		return err
	}
	defer response.Body.Close()
	if out == nil {
		_, err = io.Copy(io.Discard, response.Body)
		return err
	}
	return json.NewDecoder(response.Body).Decode(out)
}

func (d *dockerEngine) open(ctx context.Context, method, path string, query url.Values, body any) (*http.Response, error) {
	if d.version != "" {
		path = "/v" + d.version + path
	}
	request, err := jsonRequest(ctx, method, d.base+path, query, body)
	if err != nil {
		return nil, err
	}
	response, err := d.http.Do(request)
	if err != nil {
		return nil, err
	}
	if response.StatusCode >= 300 {
		defer response.Body.Close()
		var answer struct {
			Message string `json:"message"`
		}
		data, _ := io.ReadAll(response.Body)
		if json.Unmarshal(data, &answer) != nil || answer.Message == "" {
			answer.Message = strings.TrimSpace(string(data))
		}
		return nil, fmt.Errorf("Error response from daemon: %s (%d)", answer.Message, response.StatusCode)
	}
	return response, nil
}

// jsonRequest is an API request to target with the query, and body (when not nil) as JSON.
func jsonRequest(ctx context.Context, method, target string, query url.Values, body any) (*http.Request, error) {
	if len(query) > 0 {
		target += "?" + query.Encode()
	}
	var reader io.Reader
	if body != nil {
		data, err := json.Marshal(body)
		if err != nil {
			return nil, err
		}
		reader = bytes.NewReader(data)
	}
	request, err := http.NewRequestWithContext(ctx, method, target, reader)
	if err != nil {
		return nil, err
	}
	if body != nil {
		request.Header.Set("Content-Type", "application/json")
	}
	return request, nil
}

// pullPolicies reads [runners.docker] pull_policy, a string or a list; the runner's default is always.
func pullPolicies(docker map[string]any) []string {
	switch value := docker["pull_policy"].(type) {
	case string:
		return []string{value}
	case []any:
		var policies []string
		for _, item := range value {
			if text, ok := item.(string); ok {
				policies = append(policies, text)
			}
		}
		if len(policies) > 0 {
			return policies
		}
	}
	return []string{"always"}
}

// takeImage makes the image available by the first policy that works, as the runner's pull manager
// tries each in turn.
func (d *dockerEngine) takeImage(ctx context.Context, name string, policies []string, log io.Writer) error {
	var last error
	for _, policy := range policies {
		switch policy {
		case "never", "if-not-present":
			if err := d.call(ctx, http.MethodGet, "/images/"+name+"/json", nil, nil, nil); err == nil {
				fmt.Fprintf(log, "Using locally found image version due to %q pull policy\n", policy)
				return nil
			} else if policy == "never" {
				last = fmt.Errorf("failed to pull image %q: image not found locally and pull policy is never: %w", name, err)
				continue
			}
			fallthrough
		case "always":
			fmt.Fprintf(log, "Pulling docker image %s ...\n", name)
			repository, tag := name, "latest"
			if at := strings.LastIndex(name, ":"); at > strings.LastIndex(name, "/") {
				repository, tag = name[:at], name[at+1:]
			}
			query := url.Values{"fromImage": {repository}, "tag": {tag}}
			if last = d.call(ctx, http.MethodPost, "/images/create", query, nil, nil); last == nil {
				return nil
			}
		default:
			last = fmt.Errorf("unsupported pull_policy %q", policy)
		}
	}
	return last
}

func (m *manager) runDocker(config *Config, runner RunnerConfig, job *jobPayload, log *trace) (int, error) {
	timeout := time.Duration(job.RunnerInfo.Timeout) * time.Second
	if timeout <= 0 {
		timeout = time.Hour
	}
	ctx, cancel := context.WithTimeout(m.abort, timeout)
	defer cancel()
	engine, err := connectDocker(ctx, dockerHost(runner))
	if err != nil {
		return 0, err
	}
	image := job.Image.Name
	if image == "" {
		image, _ = runner.Docker["image"].(string)
	}
	if image == "" {
		return 0, fmt.Errorf("no image given: neither the job nor [runners.docker] image names one")
	}
	fmt.Fprintf(log, "Using Docker executor with image %s ...\n", image)
	if err := engine.takeImage(ctx, image, pullPolicies(runner.Docker), log); err != nil {
		return 0, err
	}

	random := make([]byte, 4)
	_, _ = rand.Read(random)
	slot := job.slot // the build's ProjectRunnerID (its concurrent slot for the project)
	name := fmt.Sprintf("runner-%s-project-%d-concurrent-%d-%s-build",
		strings.ToLower(shortToken(runner.Token)), job.JobInfo.ProjectID, slot, hex.EncodeToString(random))
	labels := map[string]string{
		"job.id": strconv.FormatInt(job.ID, 10), "job.url": jobURL(job), "job.sha": job.GitInfo.Sha,
		"job.before_sha": job.GitInfo.BeforeSha, "job.ref": job.GitInfo.Ref, "job.timeout": timeout.String(),
		"project.id": strconv.FormatInt(job.JobInfo.ProjectID, 10), "project.runner_id": strconv.Itoa(slot),
		"pipeline.id": job.variable("CI_PIPELINE_ID"), "runner.id": shortToken(runner.Token),
		"runner.local_id": "0", "runner.system_id": m.systemID, "managed": "true", "type": "build",
	}
	prefixed := map[string]string{}
	for key, value := range labels {
		prefixed["com.gitlab.gitlab-runner."+key] = value
	}
	env := []string{"CI=true", fmt.Sprintf("CI_JOB_ID=%d", job.ID), "CI_SERVER_URL=" + runner.URL, "CI_BUILDS_DIR=/builds"}
	for _, variable := range job.Variables {
		env = append(env, variable.Key+"="+variable.Value)
	}
	host := map[string]any{}
	if privileged, _ := runner.Docker["privileged"].(bool); privileged {
		host["Privileged"] = true
	}
	if mode, _ := runner.Docker["network_mode"].(string); mode != "" {
		host["NetworkMode"] = mode
	}
	var binds []string
	anonymous := map[string]any{}
	if volumes, ok := runner.Docker["volumes"].([]any); ok {
		for _, item := range volumes {
			if volume, _ := item.(string); strings.Contains(volume, ":") {
				binds = append(binds, volume)
			} else if volume != "" {
				anonymous[volume] = map[string]any{}
			}
		}
	}
	host["Binds"] = binds
	body := map[string]any{
		"Image": image, "Cmd": []string{"sh", "-c", jobScript(job)}, "Env": env, "Labels": prefixed,
		"WorkingDir": "/builds", "Volumes": anonymous, "HostConfig": host,
	}
	// The job's `image: entrypoint:` replaces the image's own (executors/docker overwriteEntrypoint);
	// without it the image's entrypoint runs the script, as with the real runner.
	if len(job.Image.Entrypoint) > 0 {
		body["Entrypoint"] = job.Image.Entrypoint
	}
	var created struct {
		ID string `json:"Id"`
	}
	if err := engine.call(ctx, http.MethodPost, "/containers/create", url.Values{"name": {name}}, body, &created); err != nil {
		return 0, err
	}
	// Removed whatever happens, as the runner's cleanup does (with the container's anonymous volumes).
	defer func() {
		cleanup, done := context.WithTimeout(context.Background(), time.Minute)
		defer done()
		_ = engine.call(cleanup, http.MethodDelete, "/containers/"+created.ID, url.Values{"force": {"1"}, "v": {"1"}}, nil, nil)
	}()
	if err := engine.call(ctx, http.MethodPost, "/containers/"+created.ID+"/start", nil, nil, nil); err != nil {
		return 0, err
	}
	logs, err := engine.open(ctx, http.MethodGet, "/containers/"+created.ID+"/logs",
		url.Values{"follow": {"1"}, "stdout": {"1"}, "stderr": {"1"}}, nil)
	if err != nil {
		return 0, err
	}
	demultiplex(logs.Body, log)
	logs.Body.Close()
	var waited struct {
		StatusCode int `json:"StatusCode"`
	}
	if err := engine.call(ctx, http.MethodPost, "/containers/"+created.ID+"/wait", nil, nil, &waited); err != nil {
		return 0, err
	}
	if ctx.Err() != nil {
		return 0, ctx.Err()
	}
	return waited.StatusCode, nil
}

// demultiplex copies a non-TTY container's log stream (8-byte frame headers) into the job log.
func demultiplex(stream io.Reader, out io.Writer) {
	reader := bufio.NewReader(stream)
	header := make([]byte, 8)
	for {
		if _, err := io.ReadFull(reader, header); err != nil {
			return
		}
		if _, err := io.CopyN(out, reader, int64(binary.BigEndian.Uint32(header[4:]))); err != nil {
			return
		}
	}
}

// jobScript is the job's steps as one shell script, each line echoed before it runs.
func jobScript(job *jobPayload) string {
	var script strings.Builder
	script.WriteString("set -e\n")
	for _, step := range job.Steps {
		for _, line := range step.Script {
			fmt.Fprintf(&script, "echo %s\n%s\n", strconv.Quote("$ "+line), line)
		}
	}
	return script.String()
}

// jobURL is the job's page, from the project's repository address (common.Build.JobURL).
func jobURL(job *jobPayload) string {
	project := strings.TrimSuffix(job.GitInfo.RepoURL, ".git")
	if parsed, err := url.Parse(project); err == nil {
		parsed.User = nil
		project = parsed.String()
	}
	return fmt.Sprintf("%s/-/jobs/%d", project, job.ID)
}
