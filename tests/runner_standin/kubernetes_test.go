package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeKube is a Kubernetes API server as the executor sees it: it records each call ("METHOD path",
// with "?watch" for watches), answers 403 with the API's message for a forbidden "METHOD resource"
// (resource like "pods", "pods/exec", "namespaces"), keeps the pods it is given (Running, build ready),
// and speaks v5.channel.k8s.io on exec and attach: a script-saving exec records its stdin, the log
// exec prints the job's output once the attach has started the stage, the attach records its line.
type fakeKube struct {
	*httptest.Server
	t         *testing.T
	mu        sync.Mutex
	calls     []string
	forbidden map[string]bool
	informers bool
	pods      map[string]map[string]any
	saved     []string
	attached  []string
	started   chan struct{}
	output    string
	exitCode  int
	execCode  int  // the legacy exec's exit code
	pullFails bool // a pod with imagePullPolicy Always cannot get its image
	tokens    []string
}

func newFakeKube(t *testing.T) *fakeKube {
	f := &fakeKube{t: t, forbidden: map[string]bool{}, informers: true, pods: map[string]map[string]any{},
		started: make(chan struct{}), output: "$ echo hello\nhello\n"}
	f.Server = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.Close)
	return f
}

func (f *fakeKube) record(call string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls = append(f.calls, call)
}

func (f *fakeKube) recorded() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.calls...)
}

var (
	namespacedPath = regexp.MustCompile(`^/api/v1/namespaces/([^/]+)/([^/]+)(?:/([^/]+))?(?:/([^/]+))?$`)
	verbs          = map[string]string{"GET": "get", "POST": "create", "PUT": "update", "DELETE": "delete"}
)

func (f *fakeKube) forbid(w http.ResponseWriter, method, resource, name, namespace string) bool {
	f.mu.Lock()
	forbidden := f.forbidden[method+" "+resource]
	f.mu.Unlock()
	if !forbidden {
		return false
	}
	kind, _, _ := strings.Cut(resource, "/")
	subject := kind
	if name != "" {
		subject = fmt.Sprintf("%s %q", kind, name)
	}
	message := fmt.Sprintf(`%s is forbidden: User "system:serviceaccount:gitlab:prod-k8s-runner" cannot %s resource %q in API group "" in the namespace %q`,
		subject, verbs[method], resource, namespace)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusForbidden)
	_ = json.NewEncoder(w).Encode(map[string]any{"kind": "Status", "apiVersion": "v1", "status": "Failure",
		"message": message, "reason": "Forbidden", "code": 403})
	return true
}

func reply(w http.ResponseWriter, status int, body any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(body)
}

func (f *fakeKube) serve(w http.ResponseWriter, r *http.Request) {
	call := r.Method + " " + r.URL.Path
	if r.URL.Query().Get("watch") == "true" {
		call += "?watch"
	}
	f.record(call)
	f.mu.Lock()
	f.tokens = append(f.tokens, r.Header.Get("Authorization"))
	f.mu.Unlock()
	var body map[string]any
	if r.Body != nil {
		data, _ := io.ReadAll(r.Body)
		_ = json.Unmarshal(data, &body)
	}
	switch {
	case r.URL.Path == "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews":
		reply(w, http.StatusCreated, map[string]any{"status": map[string]any{"allowed": f.informers}})
		return
	case r.URL.Path == "/version":
		reply(w, http.StatusOK, map[string]string{"major": "1", "minor": "36", "gitVersion": "v1.36.3"})
		return
	case r.URL.Path == "/api/v1/namespaces" && r.Method == http.MethodPost:
		if !f.forbid(w, r.Method, "namespaces", "", "") {
			reply(w, http.StatusCreated, body)
		}
		return
	case strings.HasPrefix(r.URL.Path, "/api/v1/namespaces/") && strings.Count(r.URL.Path, "/") == 4:
		if !f.forbid(w, r.Method, "namespaces", strings.TrimPrefix(r.URL.Path, "/api/v1/namespaces/"), "") {
			reply(w, http.StatusOK, map[string]any{})
		}
		return
	}
	match := namespacedPath.FindStringSubmatch(r.URL.Path)
	if match == nil {
		reply(w, http.StatusNotFound, map[string]any{"message": "not found", "code": 404})
		return
	}
	namespace, resource, name, sub := match[1], match[2], match[3], match[4]
	if sub != "" {
		resource += "/" + sub
	}
	verb := r.Method
	if r.Header.Get("Upgrade") == "websocket" {
		verb = "POST" // authorized as create (AuthorizePodWebsocketUpgradeCreatePermission)
	}
	if f.forbid(w, verb, resource, name, namespace) {
		return
	}
	switch {
	case resource == "pods" && name == "" && r.URL.Query().Get("watch") == "true":
		w.WriteHeader(http.StatusOK)
		w.(http.Flusher).Flush()
		<-r.Context().Done()
	case resource == "pods" && name == "" && r.Method == http.MethodGet:
		reply(w, http.StatusOK, map[string]any{"metadata": map[string]any{"resourceVersion": "7"}, "items": []any{}})
	case resource == "pods" && r.Method == http.MethodPost:
		metadata := body["metadata"].(map[string]any)
		metadata["uid"] = "uid-1"
		f.mu.Lock()
		f.pods[metadata["name"].(string)] = body
		f.mu.Unlock()
		reply(w, http.StatusCreated, body)
	case resource == "pods" && r.Method == http.MethodGet:
		f.mu.Lock()
		pod, ok := f.pods[name]
		pullFails := f.pullFails
		f.mu.Unlock()
		if !ok {
			reply(w, http.StatusNotFound, map[string]any{"message": fmt.Sprintf("pods %q not found", name), "code": 404})
			return
		}
		container := pod["spec"].(map[string]any)["containers"].([]any)[0].(map[string]any)
		if pullFails && container["imagePullPolicy"] == "Always" {
			reply(w, http.StatusOK, map[string]any{
				"metadata": map[string]any{"name": name, "namespace": namespace, "uid": "uid-1"},
				"status": map[string]any{"phase": "Pending", "containerStatuses": []any{
					map[string]any{"name": "build", "ready": false, "state": map[string]any{"waiting": map[string]any{
						"reason": "ErrImagePull", "message": "failed to resolve reference \"alpine:3.20.3\": no registry here"}}},
				}},
			})
			return
		}
		reply(w, http.StatusOK, map[string]any{
			"metadata": map[string]any{"name": name, "namespace": namespace, "uid": "uid-1"},
			"status": map[string]any{"phase": "Running", "containerStatuses": []any{
				map[string]any{"name": "build", "ready": true, "state": map[string]any{"running": map[string]any{}}},
			}},
		})
	case resource == "pods" && r.Method == http.MethodDelete:
		reply(w, http.StatusOK, map[string]any{})
	case resource == "pods/exec":
		f.exec(w, r)
	case resource == "pods/attach":
		f.attach(w, r)
	case resource == "events":
		reply(w, http.StatusOK, map[string]any{"items": []any{
			map[string]any{"message": "Back-off pulling image \"alpine:3.20.3\"", "lastTimestamp": "2026-01-01T00:00:02Z"},
			map[string]any{"message": "Failed to pull image \"alpine:3.20.3\"", "lastTimestamp": "2026-01-01T00:00:01Z"},
		}})
	case resource == "secrets" && (r.Method == http.MethodPost || r.Method == http.MethodPut):
		reply(w, http.StatusOK, body)
	default:
		reply(w, http.StatusOK, map[string]any{})
	}
}

// upgrade is the server side of the WebSocket handshake.
func upgrade(t *testing.T, w http.ResponseWriter, r *http.Request) *channelConn {
	if r.Method != http.MethodGet || r.Header.Get("Sec-WebSocket-Protocol") != channelProtocol {
		t.Errorf("%s %s: not a v5 WebSocket upgrade: %v", r.Method, r.URL, r.Header)
	}
	conn, buffered, err := w.(http.Hijacker).Hijack()
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(buffered, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"+
		"Sec-WebSocket-Accept: %s\r\nSec-WebSocket-Protocol: %s\r\n\r\n", websocketAccept(r.Header.Get("Sec-WebSocket-Key")), channelProtocol)
	_ = buffered.Flush()
	channels := newChannelConn(conn, bufio.NewReader(buffered), false)
	// As the API server does, an empty message on each stream first.
	_ = channels.send(streamStdout, nil)
	return channels
}

// readStdin reads stdin until the client closes it.
func readStdin(t *testing.T, conn *channelConn) string {
	var stdin strings.Builder
	for {
		stream, data, err := conn.receive()
		if err != nil {
			t.Errorf("reading stdin: %v", err)
			return stdin.String()
		}
		switch stream {
		case streamStdin:
			stdin.Write(data)
		case streamClose:
			if len(data) == 1 && data[0] == streamStdin {
				return stdin.String()
			}
		}
	}
}

func (f *fakeKube) exec(w http.ResponseWriter, r *http.Request) {
	command := r.URL.Query()["command"]
	conn := upgrade(f.t, w, r)
	defer conn.Close()
	switch {
	case len(command) == 3 && strings.HasPrefix(command[2], "tail -n +1 -f /logs-"):
		// The log file, once the stage runs: the output, then the trap's exit status line; until the
		// client goes.
		closed := make(chan struct{})
		go func() {
			defer close(closed)
			for {
				if _, _, err := conn.receive(); err != nil {
					return
				}
			}
		}()
		select {
		case <-f.started:
		case <-closed:
			return
		}
		_ = conn.send(streamStdout, []byte(f.output+"\n"))
		_ = conn.send(streamStdout, []byte(fmt.Sprintf(`{"command_exit_code": %d, "script": "/scripts-1-77/step_script"}`+"\n", f.exitCode)))
		<-closed
	case r.URL.Query().Get("stdin") == "true":
		stdin := readStdin(f.t, conn)
		f.mu.Lock()
		f.saved = append(f.saved, stdin)
		code := f.execCode
		f.mu.Unlock()
		if strings.Contains(stdin, "echo hello") && !strings.Contains(stdin, "printf") {
			// The legacy strategy: the script itself.
			_ = conn.send(streamStdout, []byte("hello\n"))
		}
		status := `{"metadata":{},"status":"Success"}`
		if code != 0 {
			status = fmt.Sprintf(`{"metadata":{},"status":"Failure","message":"command terminated with non-zero exit code: exit status %d","reason":"NonZeroExitCode","details":{"causes":[{"reason":"ExitCode","message":"%d"}]}}`, code, code)
		}
		_ = conn.send(streamError, []byte(status))
	default:
		f.t.Errorf("unexpected exec %v", command)
	}
}

func (f *fakeKube) attach(w http.ResponseWriter, r *http.Request) {
	query := r.URL.Query()
	if query.Get("container") != "build" || query.Get("stdin") != "true" || query.Get("stdout") != "" {
		f.t.Errorf("attach query %v", query)
	}
	conn := upgrade(f.t, w, r)
	defer conn.Close()
	line := readStdin(f.t, conn)
	f.mu.Lock()
	f.attached = append(f.attached, line)
	f.mu.Unlock()
	_ = conn.send(streamError, []byte(`{"metadata":{},"status":"Success"}`))
	close(f.started)
}

// fakeJobGitLab takes a job's trace and final state.
type fakeJobGitLab struct {
	*httptest.Server
	mu    sync.Mutex
	trace strings.Builder
	final map[string]any
}

func newFakeJobGitLab(t *testing.T) *fakeJobGitLab {
	g := &fakeJobGitLab{}
	g.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		data, _ := io.ReadAll(r.Body)
		g.mu.Lock()
		defer g.mu.Unlock()
		switch {
		case r.Method == http.MethodPatch:
			g.trace.Write(data)
			w.WriteHeader(http.StatusAccepted)
		case r.Method == http.MethodPut:
			_ = json.Unmarshal(data, &g.final)
			w.WriteHeader(http.StatusOK)
		}
	}))
	t.Cleanup(g.Close)
	return g
}

func kubeRunner(kube *fakeKube, gitlabURL string, extra map[string]any) RunnerConfig {
	settings := map[string]any{
		"host": kube.URL, "bearer_token": "sa-token", "namespace": "gitlab", "image": "alpine:3.20.3",
		"pull_policy": []any{"always"}, "poll_interval": int64(1), "poll_timeout": int64(10),
		"cpu_limit": "2", "memory_request": "512Mi",
	}
	for key, value := range extra {
		settings[key] = value
	}
	return RunnerConfig{Name: "prod-k8s", URL: gitlabURL, Token: "glrt-t1_AbcDefGhiJkl", Executor: "kubernetes", Kubernetes: settings}
}

func kubeJob() *jobPayload {
	job := &jobPayload{ID: 77, Token: "job-token"}
	job.JobInfo.ProjectID, job.JobInfo.Name, job.JobInfo.ProjectName = 1, "build job", "my project"
	job.GitInfo.RepoURL, job.GitInfo.Ref, job.GitInfo.Sha = "https://gitlab.example/group/project.git", "main", strings.Repeat("a", 40)
	job.RunnerInfo.Timeout = 60
	job.Steps = append(job.Steps, struct {
		Name    string   `json:"name"`
		Script  []string `json:"script"`
		Timeout int      `json:"timeout"`
	}{Name: "script", Script: []string{"echo hello"}})
	job.Variables = append(job.Variables, struct {
		Key   string `json:"key"`
		Value string `json:"value"`
	}{"CI_PROJECT_NAMESPACE", "group"})
	return job
}

func testManager(t *testing.T) *manager {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	return &manager{systemID: "s_0123456789ab", abort: ctx, cancel: cancel, running: map[string]int{}, slots: map[string]map[int]bool{}}
}

// withoutInformer drops the pod watcher's calls, which run beside the job's.
func withoutInformer(calls []string) []string {
	var main []string
	for _, call := range calls {
		if call == "GET /api/v1/namespaces/gitlab/pods" || call == "GET /api/v1/namespaces/gitlab/pods?watch" ||
			call == "GET /api/v1/namespaces/ci-job-77/pods" || call == "GET /api/v1/namespaces/ci-job-77/pods?watch" {
			continue
		}
		main = append(main, call)
	}
	return main
}

// collapse replaces the pod's name by POD.
func collapse(calls []string, pod string) []string {
	var out []string
	for _, call := range calls {
		call = strings.ReplaceAll(call, pod, "POD")
		out = append(out, call)
	}
	return out
}

func TestKubernetesJobRunsThroughTheAPI(t *testing.T) {
	kube := newFakeKube(t)
	m := testManager(t)
	log := &trace{}
	runner := kubeRunner(kube, "https://gitlab.example", map[string]any{"service_account": "builder",
		"resource_availability_check_max_attempts": int64(1), "node_selector": map[string]any{"kubernetes.io/os": "linux"}})
	code, err := m.runKubernetes(&Config{}, runner, kubeJob(), log)
	if err != nil || code != 0 {
		t.Fatalf("code %d, err %v\n%s", code, err, log.data.String())
	}

	if len(kube.pods) != 1 {
		t.Fatalf("pods = %v", kube.pods)
	}
	var name string
	var pod map[string]any
	for name, pod = range kube.pods {
	}
	if !regexp.MustCompile(`^runner-abcdefghi-project-1-concurrent-0-[a-z0-9]{8}$`).MatchString(name) {
		t.Errorf("pod name %s", name)
	}
	calls := collapse(withoutInformer(kube.recorded()), name)
	want := []string{
		"POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
		"POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
		"GET /version",
		"GET /api/v1/namespaces/gitlab/serviceaccounts/builder",
		"POST /api/v1/namespaces/gitlab/pods",
		"GET /api/v1/namespaces/gitlab/pods/POD",
		"GET /api/v1/namespaces/gitlab/pods/POD",
		"GET /api/v1/namespaces/gitlab/pods/POD/exec",
	}
	if len(calls) < len(want) || strings.Join(calls[:len(want)], "\n") != strings.Join(want, "\n") {
		t.Fatalf("calls:\n%s", strings.Join(calls, "\n"))
	}
	rest := strings.Join(calls[len(want):], "\n")
	for _, expected := range []string{"GET /api/v1/namespaces/gitlab/pods/POD/attach", "DELETE /api/v1/namespaces/gitlab/pods/POD"} {
		if !strings.Contains(rest, expected) {
			t.Errorf("no %s in:\n%s", expected, rest)
		}
	}
	if last := calls[len(calls)-1]; last != "DELETE /api/v1/namespaces/gitlab/pods/POD" {
		t.Errorf("last call %s", last)
	}
	if strings.Count(rest, "/exec") != 2 {
		t.Errorf("want the log exec and the step script's exec after the first:\n%s", rest)
	}
	for _, token := range kube.tokens {
		if token != "Bearer sa-token" {
			t.Errorf("authorization %q", token)
		}
	}

	metadata := pod["metadata"].(map[string]any)
	labels := metadata["labels"].(map[string]any)
	for key, value := range map[string]string{
		"pod": "runner-abcdefghi-project-1-concurrent-0", "job.runner.gitlab.com/pod": "runner-abcdefghi-project-1-concurrent-0",
		"project.runner.gitlab.com/id": "1", "project.runner.gitlab.com/name": "my_project",
		"project.runner.gitlab.com/namespace": "group", "manager.runner.gitlab.com/name": "prod-k8s",
		"manager.runner.gitlab.com/id-short": "AbcDefGhi",
	} {
		if labels[key] != value {
			t.Errorf("label %s = %v, want %s", key, labels[key], value)
		}
	}
	annotations := metadata["annotations"].(map[string]any)
	for key, value := range map[string]string{
		"job.runner.gitlab.com/id": "77", "job.runner.gitlab.com/url": "https://gitlab.example/group/project/-/jobs/77",
		"job.runner.gitlab.com/name": "build job", "job.runner.gitlab.com/timeout": "1m0s", "project.runner.gitlab.com/id": "1",
	} {
		if annotations[key] != value {
			t.Errorf("annotation %s = %v, want %s", key, annotations[key], value)
		}
	}
	spec := pod["spec"].(map[string]any)
	if spec["restartPolicy"] != "Never" || spec["serviceAccountName"] != "builder" ||
		spec["nodeSelector"].(map[string]any)["kubernetes.io/os"] != "linux" {
		t.Errorf("spec = %v", spec)
	}
	container := spec["containers"].([]any)[0].(map[string]any)
	if container["name"] != "build" || container["image"] != "alpine:3.20.3" || container["imagePullPolicy"] != "Always" ||
		container["stdin"] != true || container["command"].([]any)[0] != "sh" {
		t.Errorf("container = %v", container)
	}
	resources := container["resources"].(map[string]any)
	if resources["limits"].(map[string]any)["cpu"] != "2" || resources["requests"].(map[string]any)["memory"] != "512Mi" {
		t.Errorf("resources = %v", resources)
	}
	mounts := fmt.Sprint(container["volumeMounts"])
	if !strings.Contains(mounts, "/scripts-1-77") || !strings.Contains(mounts, "/logs-1-77") || !strings.Contains(mounts, "/builds") {
		t.Errorf("mounts = %s", mounts)
	}

	if len(kube.saved) != 2 || !strings.Contains(kube.saved[0], "/scripts-1-77/detect_shell_script") ||
		!strings.Contains(kube.saved[0], "touch /logs-1-77/output.log") || !strings.Contains(kube.saved[1], "echo hello") ||
		!strings.Contains(kube.saved[1], "runner_script_trap") {
		t.Errorf("saved scripts = %q", kube.saved)
	}
	if len(kube.attached) != 1 || kube.attached[0] !=
		"sh -c '(/scripts-1-77/detect_shell_script /scripts-1-77/step_script 2>&1 | tee -a /logs-1-77/output.log) &'\n" {
		t.Errorf("attached = %q", kube.attached)
	}
	text := log.data.String()
	for _, expected := range []string{"Using Kubernetes namespace: gitlab", "Using Kubernetes executor with image alpine:3.20.3",
		"Using effective pull policy of [Always] for container build", "$ echo hello\nhello\n"} {
		if !strings.Contains(text, expected) {
			t.Errorf("no %q in the job log:\n%s", expected, text)
		}
	}
	if strings.Contains(text, "command_exit_code") {
		t.Errorf("the exit status line reached the job log:\n%s", text)
	}
}

func TestKubernetesScriptExitCodeComesFromTheLog(t *testing.T) {
	kube := newFakeKube(t)
	kube.exitCode = 3
	code, err := testManager(t).runKubernetes(&Config{}, kubeRunner(kube, "https://gitlab.example", nil), kubeJob(), &trace{})
	if err != nil || code != 3 {
		t.Fatalf("code %d, err %v", code, err)
	}
}

func TestKubernetesNamespacePerJob(t *testing.T) {
	kube := newFakeKube(t)
	runner := kubeRunner(kube, "https://gitlab.example", map[string]any{"namespace_per_job": true})
	code, err := testManager(t).runKubernetes(&Config{}, runner, kubeJob(), &trace{})
	if err != nil || code != 0 {
		t.Fatalf("code %d, err %v", code, err)
	}
	calls := withoutInformer(kube.recorded())
	if calls[2] != "POST /api/v1/namespaces" || calls[len(calls)-1] != "DELETE /api/v1/namespaces/ci-job-77" ||
		!strings.Contains(strings.Join(calls, "\n"), "POST /api/v1/namespaces/ci-job-77/pods\n") {
		t.Errorf("calls:\n%s", strings.Join(calls, "\n"))
	}
}

func TestKubernetesLegacyExecStrategy(t *testing.T) {
	kube := newFakeKube(t)
	kube.execCode = 2
	runner := kubeRunner(kube, "https://gitlab.example", nil)
	runner.FeatureFlags = map[string]any{"FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY": true}
	log := &trace{}
	code, err := testManager(t).runKubernetes(&Config{}, runner, kubeJob(), log)
	if err != nil || code != 2 {
		t.Fatalf("code %d, err %v", code, err)
	}
	if len(kube.attached) != 0 || len(kube.saved) != 1 || !strings.Contains(kube.saved[0], "echo hello") {
		t.Errorf("attached %q, saved %q", kube.attached, kube.saved)
	}
	if !strings.Contains(log.data.String(), "hello\n") {
		t.Errorf("job log:\n%s", log.data.String())
	}
}

// runJob runs a job through process(), as the manager does, and returns GitLab's view of it.
func runJob(t *testing.T, kube *fakeKube, extra map[string]any) (string, map[string]any) {
	gitlab := newFakeJobGitLab(t)
	m := testManager(t)
	runner := kubeRunner(kube, gitlab.URL, extra)
	api, err := newClient(runner, "/nonexistent/config.toml", m.systemID, nil)
	if err != nil {
		t.Fatal(err)
	}
	m.process(api, &Config{}, runner, kubeJob())
	gitlab.mu.Lock()
	defer gitlab.mu.Unlock()
	return gitlab.trace.String(), gitlab.final
}

func TestKubernetesMissingRBACRuleFailsTheJobWithTheAPIMessage(t *testing.T) {
	for _, rule := range []string{"POST pods", "POST pods/exec", "POST pods/attach", "POST namespaces"} {
		t.Run(rule, func(t *testing.T) {
			kube := newFakeKube(t)
			kube.forbidden[rule] = true
			trace, final := runJob(t, kube, map[string]any{"namespace_per_job": rule == "POST namespaces"})
			resource := strings.TrimPrefix(rule, "POST ")
			if !strings.Contains(trace, `cannot create resource "`+resource+`" in API group ""`) ||
				!strings.Contains(trace, "ERROR: Job failed (system failure):") {
				t.Errorf("job log:\n%s", trace)
			}
			if final["state"] != "failed" || final["failure_reason"] != "runner_system_failure" {
				t.Errorf("final update %v", final)
			}
			calls := kube.recorded()
			if rule != "POST pods" && rule != "POST namespaces" && !strings.Contains(strings.Join(calls, "\n"), "DELETE /api/v1/namespaces/gitlab/pods/runner-") {
				t.Errorf("the pod was not deleted:\n%s", strings.Join(calls, "\n"))
			}
		})
	}
}

func TestKubernetesWithoutListAndWatchTheInformerIsOff(t *testing.T) {
	kube := newFakeKube(t)
	kube.informers = false
	trace, final := runJob(t, kube, nil)
	if final["state"] != "success" || !strings.Contains(trace, `WARNING: won't use informers: "not allowed: list on pods"`) {
		t.Errorf("final %v, job log:\n%s", final, trace)
	}
	for _, call := range kube.recorded() {
		if strings.HasSuffix(call, "?watch") {
			t.Errorf("watched without the right: %s", call)
		}
	}
}

func TestKubernetesInClusterConfiguration(t *testing.T) {
	dir := t.TempDir()
	defer func(saved string) { serviceAccountDir = saved }(serviceAccountDir)
	serviceAccountDir = dir
	t.Setenv("KUBERNETES_SERVICE_HOST", "")
	if _, err := newKubeClient(kubeSettings{}); err == nil || !strings.Contains(err.Error(), "KUBERNETES_SERVICE_HOST") {
		t.Fatalf("err = %v", err)
	}
	t.Setenv("KUBERNETES_SERVICE_HOST", "fd00::1")
	t.Setenv("KUBERNETES_SERVICE_PORT", "443")
	if err := writeFile(dir+"/token", "projected-token"); err != nil {
		t.Fatal(err)
	}
	client, err := newKubeClient(kubeSettings{})
	if err != nil {
		t.Fatal(err)
	}
	token, _ := client.token()
	if client.base != "https://[fd00::1]:443" || token != "projected-token" {
		t.Errorf("base %s, token %s", client.base, token)
	}
}

func writeFile(path, text string) error {
	return os.WriteFile(path, []byte(text), 0o600)
}

func TestKubernetesNextPullPolicyAfterAnImagePullFailure(t *testing.T) {
	kube := newFakeKube(t)
	kube.pullFails = true
	log := &trace{}
	runner := kubeRunner(kube, "https://gitlab.example", map[string]any{"pull_policy": []any{"always", "if-not-present"}})
	code, err := testManager(t).runKubernetes(&Config{}, runner, kubeJob(), log)
	if err != nil || code != 0 {
		t.Fatalf("code %d, err %v\n%s", code, err, log.data.String())
	}
	calls := strings.Join(kube.recorded(), "\n")
	if strings.Count(calls, "POST /api/v1/namespaces/gitlab/pods\n") != 2 || strings.Count(calls, "DELETE /api/v1/namespaces/gitlab/pods/") != 2 {
		t.Errorf("calls:\n%s", calls)
	}
	if !strings.Contains(log.data.String(), `with policy "Always": failed to resolve reference`) ||
		!strings.Contains(log.data.String(), "Using effective pull policy of [IfNotPresent] for container build") {
		t.Errorf("job log:\n%s", log.data.String())
	}
}

func TestKubernetesImagePullFailureWithoutAnotherPolicy(t *testing.T) {
	kube := newFakeKube(t)
	kube.pullFails = true
	trace, final := runJob(t, kube, nil)
	if final["state"] != "failed" || !strings.Contains(trace, "image pull failed: failed to resolve reference") ||
		!strings.Contains(trace, "WARNING: Event retrieved from the cluster: Failed to pull image \"alpine:3.20.3\"\n"+
			"WARNING: Event retrieved from the cluster: Back-off pulling image") {
		t.Errorf("final %v, job log:\n%s", final, trace)
	}
	if !strings.Contains(strings.Join(kube.recorded(), "\n"), "GET /api/v1/namespaces/gitlab/events") {
		t.Error("no events listed")
	}
}

func TestProjectSlots(t *testing.T) {
	m := testManager(t)
	runner := RunnerConfig{Token: "glrt-t1_AbcDefGhiJkl"}
	first, second, other := kubeJob(), kubeJob(), kubeJob()
	other.JobInfo.ProjectID = 2
	m.acquireSlot(runner, first)
	m.acquireSlot(runner, second)
	m.acquireSlot(runner, other)
	if first.slot != 0 || second.slot != 1 || other.slot != 0 {
		t.Errorf("slots %d %d %d", first.slot, second.slot, other.slot)
	}
	m.releaseSlot(runner, first)
	third := kubeJob()
	m.acquireSlot(runner, third)
	if third.slot != 0 || projectUniqueName(runner, second) != "runner-abcdefghi-project-1-concurrent-1" {
		t.Errorf("slot %d, name %s", third.slot, projectUniqueName(runner, second))
	}
}

// The scripts the executor hands the build container, run here by a real shell the way the container
// runs them: saved through the detect-shell command's stdin, then the stage started in the background
// of a shell reading the attach line; the log file ends with the exit status line.
func TestStageScriptsRunInAShell(t *testing.T) {
	dir := t.TempDir()
	job := kubeJob()
	job.Steps[0].Script = []string{"echo hello", `echo "it's \\back" 'quoted'`, "false", "echo never"}
	k := &kubeRun{job: job, settings: kubeSettings{"scripts_base_dir": dir, "logs_base_dir": dir}}
	if err := os.MkdirAll(k.scriptsDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(k.logsDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	run := func(stdin string) {
		t.Helper()
		command := exec.Command("sh", "-c", detectShellScript)
		command.Stdin = strings.NewReader(stdin)
		if output, err := command.CombinedOutput(); err != nil {
			t.Fatalf("%v: %s", err, output)
		}
	}
	run(k.saveCommands(detectShellScriptName, detectShellScript, "touch "+k.logFile(), "(chmod 777 "+k.logFile()+" || true)"))
	run(k.saveCommands(stepScriptName, strings.Replace(k.stageScript(), "cd /builds", "cd "+dir, 1)))
	run(k.attachCommand(stepScriptName))

	deadline := time.Now().Add(10 * time.Second)
	var text []byte
	for time.Now().Before(deadline) {
		text, _ = os.ReadFile(k.logFile())
		if strings.Contains(string(text), "command_exit_code") {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	status := make(chan int, 1)
	var log strings.Builder
	lines := &statusLines{out: &log, status: status}
	_, _ = lines.Write(text)
	select {
	case code := <-status:
		if code != 1 {
			t.Errorf("exit code %d", code)
		}
	default:
		t.Fatalf("no exit status line in:\n%s", text)
	}
	for _, want := range []string{"$ echo hello\nhello\n", `it's \back quoted`, "$ false\n"} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("no %q in:\n%s", want, log.String())
		}
	}
	if strings.Contains(log.String(), "never\n") {
		t.Errorf("the script went on after a failure:\n%s", log.String())
	}
}
