package main

// The kubernetes executor, as gitlab-runner v18.9.0 runs a job (executors/kubernetes, attach strategy,
// the default), through the Kubernetes API with the manager pod's service account. In order:
//
//	POST /apis/authorization.k8s.io/v1/selfsubjectaccessreviews      may I list pods? may I watch them?
//	GET  /api/v1/namespaces/NS/pods?labelSelector=…                  the pod watcher (informer), when both
//	GET  /api/v1/namespaces/NS/pods?watch=true&labelSelector=…          are allowed; else a warning
//	POST /api/v1/namespaces                                         namespace_per_job: ci-job-<job id>
//	POST /api/v1/namespaces/NS/secrets                               only for a job with registry credentials
//	GET  /version                                                   the host-alias feature check
//	GET  /api/v1/namespaces/NS/serviceaccounts/SA                    service_account set and
//	GET  /api/v1/namespaces/NS/secrets/NAME                            resource_availability_check_max_attempts > 0
//	POST /api/v1/namespaces/NS/pods                                 the job pod
//	PUT  /api/v1/namespaces/NS/secrets/NAME                          the credentials Secret owned by the pod
//	GET  /api/v1/namespaces/NS/pods/POD                              every poll_interval until Running and ready
//	GET  …/pods/POD, GET …/pods/POD/exec (WebSocket)                 detect_shell_script saved in /scripts-P-J
//	GET  …/pods/POD/exec (WebSocket)                                 the log file /logs-P-J/output.log followed
//	GET  …/pods/POD, GET …/pods/POD/exec (WebSocket)                 step_script saved
//	GET  …/pods/POD, GET …/pods/POD/attach (WebSocket)               the stage started on the build shell's stdin
//	GET  /api/v1/namespaces/NS/pods/POD                              every poll_interval while the stage runs
//	GET  /api/v1/namespaces/NS/events?fieldSelector=…                after a failed stage: its Warning events
//	DELETE /api/v1/namespaces/NS/pods/POD                           propagationPolicy Background
//	DELETE /api/v1/namespaces/NS/secrets/NAME                        a Secret no pod owns
//	DELETE /api/v1/namespaces/ci-job-<job id>                        namespace_per_job
//
// The pod is the real one's: named runner-<token short>-project-<id>-concurrent-<n>-<8 random>, the
// runner's labels (pod, project.runner.gitlab.com/*, job.runner.gitlab.com/pod,
// manager.runner.gitlab.com/*) and job annotations (job.runner.gitlab.com/*, project.runner.gitlab.com/id),
// restartPolicy Never, emptyDir volumes repo (/builds), scripts and logs, service_account,
// node_selector, node_tolerations, image_pull_secrets, pod_labels and pod_annotations from config.toml;
// its build container runs the job image (the job's image, else [runners.kubernetes] image) with the
// pull policy (the job's, else pull_policy; the next one is tried after an image pull failure), the
// shell-detecting `sh -c` with stdin open, the resources and privileged setting of config.toml, the
// job's variables as its environment. The stage script ends with a trap that writes the exit status as
// a JSON line into the log, which is how the real runner learns it. A 403 on a namespace, Secret,
// pod, exec or attach call fails the job with the API's message in the job log, as in the real runner;
// there a refused service account get counts as a missing account (the check times out), refused
// list/watch only turn the informers off with a warning, and a refused events list prints nothing.
// With FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY on, the script runs through one exec instead (its
// output and exit code from the exec stream).
//
// Simplified (a test double; no helper image exists here): no helper container and no init-permissions
// container (the first exec touches the log file they would), so the log file is followed by `tail`
// in the build container where the real runner runs `gitlab-runner-helper read-logs` in the helper
// container, and only the job's script runs (no get_sources, caches, artifacts or services, no
// after_script stage of its own); exec and attach use WebSocket, not SPDY (see kube.go); no request
// retries; no job-variable overwrites (KUBERNETES_NAMESPACE_OVERWRITE and friends); no kubeconfig
// fallback outside a cluster.

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"net/url"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

const (
	buildContainerName    = "build"
	detectShellScriptName = "detect_shell_script"
	stepScriptName        = "step_script"
	informersDoc          = "https://docs.gitlab.com/runner/executors/kubernetes/#informers"
	runnerLabelNamespace  = "runner.gitlab.com"
)

var runnerLabelPattern = regexp.MustCompile(`(?i)(^|.*\.)runner\.gitlab\.com(/.*|$)`)

// detectShellScript is the build container's command (the bash shell's DockerCommand): the first shell
// found takes over, reading commands from stdin, or the script given to it.
const detectShellScript = `for candidate in /usr/local/bin/bash /usr/bin/bash /bin/bash /usr/local/bin/sh /usr/bin/sh /bin/sh /busybox/sh; do
	if [ -x "$candidate" ]; then exec "$candidate" "$@"; fi
done
echo shell not found
exit 1
`

// exitStatusTrap ends every stage script: its exit status as a JSON line in the log.
const exitStatusTrap = `runner_script_trap() {
	exit_code=$?
	printf '\n{"command_exit_code": %d, "script": "%s"}\n' "$exit_code" "$0"
	exit 0
}
trap runner_script_trap EXIT
`

// kubeSettings is [runners.kubernetes] of config.toml.
type kubeSettings map[string]any

func (s kubeSettings) str(key string) string {
	value, _ := s[key].(string)
	return value
}

func (s kubeSettings) boolean(key string) (bool, bool) {
	value, ok := s[key].(bool)
	return value, ok
}

func (s kubeSettings) integer(key string, fallback int) int {
	if value, ok := s[key].(int64); ok && value > 0 {
		return int(value)
	}
	return fallback
}

// list reads a string or an array of strings.
func (s kubeSettings) list(key string) []string {
	switch value := s[key].(type) {
	case string:
		if value != "" {
			return []string{value}
		}
	case []any:
		var items []string
		for _, item := range value {
			if text, ok := item.(string); ok {
				items = append(items, text)
			}
		}
		return items
	}
	return nil
}

func (s kubeSettings) table(key string) map[string]string {
	tableValue, _ := s[key].(map[string]any)
	if len(tableValue) == 0 {
		return nil
	}
	result := map[string]string{}
	for k, v := range tableValue {
		result[k] = fmt.Sprint(v)
	}
	return result
}

// sanitizeLabel makes a value a valid label value, as the executor's sanitizeLabel does.
func sanitizeLabel(value string) string {
	value = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' || r == '.' {
			return r
		}
		return '_'
	}, value)
	value = strings.Trim(value, "-_.")
	if len(value) > 63 {
		value = value[:63]
	}
	return strings.Trim(value, "-_.")
}

var (
	notRFC1123      = regexp.MustCompile(`[^-a-z0-9]`)
	notRFC1123Start = regexp.MustCompile(`^[^a-z0-9]+`)
)

// projectUniqueName is Build.ProjectUniqueName: runner-<token short>-project-<id>-concurrent-<slot>.
func projectUniqueName(runner RunnerConfig, job *jobPayload) string {
	name := strings.ToLower(fmt.Sprintf("runner-%s-project-%d-concurrent-%d", shortToken(runner.Token), job.JobInfo.ProjectID, job.slot))
	name = notRFC1123Start.ReplaceAllString(notRFC1123.ReplaceAllString(name, ""), "")
	if len(name) > 63 {
		name = name[:63]
	}
	return name
}

// resourceName is generateNameForK8sResources: the pattern (cut to leave room) and 8 random characters.
func resourceName(pattern string) string {
	const chars = "abcdefghijklmnopqrstuvwxyz0123456789"
	if len(pattern) > 63-8-1 {
		pattern = pattern[:63-8-1]
	}
	suffix := make([]byte, 8)
	for i := range suffix {
		n, _ := rand.Int(rand.Reader, big.NewInt(int64(len(chars))))
		suffix[i] = chars[n.Int64()]
	}
	return pattern + "-" + string(suffix)
}

// pullPolicyNames converts the runner's pull policies into Kubernetes' (ConvertFromDockerPullPolicy):
// the job's image pull_policy, else [runners.kubernetes] pull_policy, else the cluster's default ("").
func pullPolicyNames(job *jobPayload, settings kubeSettings) ([]string, error) {
	policies := job.Image.PullPolicy
	if len(policies) == 0 {
		policies = settings.list("pull_policy")
	}
	if len(policies) == 0 {
		return []string{""}, nil
	}
	var converted []string
	for _, policy := range policies {
		switch policy {
		case "always":
			converted = append(converted, "Always")
		case "if-not-present":
			converted = append(converted, "IfNotPresent")
		case "never":
			converted = append(converted, "Never")
		case "":
			converted = append(converted, "")
		default:
			return nil, fmt.Errorf("unsupported pull policy %q", policy)
		}
	}
	return converted, nil
}

// imagePullError is a container that cannot get its image (ErrImagePull, ImagePullBackOff): the next
// pull policy may be tried.
type imagePullError struct{ message string }

func (e *imagePullError) Error() string { return "image pull failed: " + e.message }

// podObject is the part of a Pod this executor reads.
type podObject struct {
	Metadata struct {
		Name              string  `json:"name"`
		Namespace         string  `json:"namespace"`
		UID               string  `json:"uid"`
		ResourceVersion   string  `json:"resourceVersion"`
		DeletionTimestamp *string `json:"deletionTimestamp"`
	} `json:"metadata"`
	Status struct {
		Phase      string `json:"phase"`
		Conditions []struct {
			Type    string `json:"type"`
			Status  string `json:"status"`
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"conditions"`
		ContainerStatuses     []containerStatus `json:"containerStatuses"`
		InitContainerStatuses []containerStatus `json:"initContainerStatuses"`
	} `json:"status"`
}

type containerStatus struct {
	Name  string `json:"name"`
	Ready bool   `json:"ready"`
	State struct {
		Waiting *struct {
			Reason  string `json:"reason"`
			Message string `json:"message"`
		} `json:"waiting"`
		Running    *struct{} `json:"running"`
		Terminated *struct {
			ExitCode int    `json:"exitCode"`
			Reason   string `json:"reason"`
		} `json:"terminated"`
	} `json:"state"`
}

// terminalContainerError is CheckTerminalContainerErrors: a container that will never start.
func terminalContainerError(statuses []containerStatus) error {
	for _, status := range statuses {
		if status.Ready || status.State.Waiting == nil {
			continue
		}
		switch status.State.Waiting.Reason {
		case "InvalidImageName":
			return fmt.Errorf("image pull failed: %s", status.State.Waiting.Message)
		case "ErrImagePull", "ImagePullBackOff":
			return &imagePullError{message: status.State.Waiting.Message}
		}
	}
	return nil
}

// terminalPodError is the pod watcher's checkTerminalPodErrors.
func terminalPodError(pod *podObject) error {
	full := pod.Metadata.Namespace + "/" + pod.Metadata.Name
	for _, condition := range pod.Status.Conditions {
		if condition.Type == "DisruptionTarget" && condition.Status == "True" {
			return fmt.Errorf("pod %q is disrupted: reason %q, message %q", full, condition.Reason, condition.Message)
		}
	}
	if pod.Metadata.DeletionTimestamp != nil {
		return fmt.Errorf("pod %q is being deleted", full)
	}
	statuses := append(append([]containerStatus{}, pod.Status.InitContainerStatuses...), pod.Status.ContainerStatuses...)
	if err := terminalContainerError(statuses); err != nil {
		return fmt.Errorf("pod %q failed: %w", full, err)
	}
	return nil
}

// podWatcher is the executor's informer-based pod watcher: a list and a watch of the job's pods (by
// their labels) that reports terminal pod errors early. Without list and watch rights it is off, with
// a warning, as in the real runner.
type podWatcher struct {
	errs    chan error
	podName atomic.Value
	cancel  context.CancelFunc
	done    chan struct{}
}

func startPodWatcher(ctx context.Context, api *kubeClient, namespace string, labels map[string]string, log io.Writer) *podWatcher {
	watcher := &podWatcher{errs: make(chan error, 1), done: make(chan struct{})}
	watcher.podName.Store("")
	ctx, watcher.cancel = context.WithCancel(ctx)
	for _, verb := range []string{"list", "watch"} {
		allowed, reason, err := api.allowed(ctx, namespace, verb, "pods")
		if err != nil {
			reason = err.Error()
		}
		if err != nil || !allowed {
			fmt.Fprintf(log, "WARNING: won't use informers: %q, see: %s\n", reason, informersDoc)
			close(watcher.done)
			return watcher
		}
	}
	selector := labelSelector(labels)
	go func() {
		defer close(watcher.done)
		for ctx.Err() == nil {
			watcher.follow(ctx, api, namespace, selector)
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
	}()
	return watcher
}

func labelSelector(labels map[string]string) string {
	keys := make([]string, 0, len(labels))
	for key := range labels {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	parts := make([]string, len(keys))
	for i, key := range keys {
		parts[i] = key + "=" + labels[key]
	}
	return strings.Join(parts, ",")
}

// follow lists the pods and watches them from that list's resource version until the stream ends.
func (w *podWatcher) follow(ctx context.Context, api *kubeClient, namespace, selector string) {
	path := "/api/v1/namespaces/" + url.PathEscape(namespace) + "/pods"
	var list struct {
		Metadata struct {
			ResourceVersion string `json:"resourceVersion"`
		} `json:"metadata"`
		Items []podObject `json:"items"`
	}
	if err := api.call(ctx, http.MethodGet, path, url.Values{"labelSelector": {selector}, "limit": {"500"}, "resourceVersion": {"0"}}, nil, &list); err != nil {
		return
	}
	for i := range list.Items {
		w.observe("ADDED", &list.Items[i])
	}
	query := url.Values{"labelSelector": {selector}, "watch": {"true"}, "allowWatchBookmarks": {"true"},
		"resourceVersion": {list.Metadata.ResourceVersion}, "timeoutSeconds": {"300"}}
	stream, err := api.open(ctx, http.MethodGet, path, query, nil)
	if err != nil {
		return
	}
	defer stream.Body.Close()
	decoder := json.NewDecoder(stream.Body)
	for {
		var event struct {
			Type   string    `json:"type"`
			Object podObject `json:"object"`
		}
		if err := decoder.Decode(&event); err != nil {
			return
		}
		w.observe(event.Type, &event.Object)
	}
}

func (w *podWatcher) observe(kind string, pod *podObject) {
	if name, _ := w.podName.Load().(string); name == "" || pod.Metadata.Name != name {
		return
	}
	var err error
	switch kind {
	case "DELETED":
		err = fmt.Errorf("pod %q is deleted", pod.Metadata.Namespace+"/"+pod.Metadata.Name)
	case "ADDED", "MODIFIED":
		err = terminalPodError(pod)
	}
	if err != nil {
		select {
		case w.errs <- err:
		case <-time.After(time.Second):
		}
	}
}

func (w *podWatcher) stop() {
	w.cancel()
	<-w.done
}

// kubeRun is one job on the kubernetes executor.
type kubeRun struct {
	m        *manager
	runner   RunnerConfig
	job      *jobPayload
	log      io.Writer
	api      *kubeClient
	settings kubeSettings
	watcher  *podWatcher

	namespace string
	image     string
	legacy    bool
	unique    string
	labels    map[string]string
	interval  time.Duration
	attempts  int

	pod    *podObject
	secret map[string]any
	owned  bool
}

func (m *manager) runKubernetes(config *Config, runner RunnerConfig, job *jobPayload, log *trace) (int, error) {
	timeout := time.Duration(job.RunnerInfo.Timeout) * time.Second
	if timeout <= 0 {
		timeout = time.Hour
	}
	ctx, cancel := context.WithTimeout(m.abort, timeout)
	defer cancel()
	k := &kubeRun{m: m, runner: runner, job: job, log: log, settings: kubeSettings(runner.Kubernetes)}
	if k.settings == nil {
		k.settings = kubeSettings{}
	}
	if err := k.prepare(ctx); err != nil {
		return 0, err
	}
	policies, err := pullPolicyNames(job, k.settings)
	if err != nil {
		k.watcher.stop()
		return 0, err
	}
	for attempt := 0; ; attempt++ {
		fmt.Fprintf(log, "Using effective pull policy of [%s] for container %s\n", policies[attempt], buildContainerName)
		code, err := k.run(ctx, policies[attempt])
		var pull *imagePullError
		if errors.As(err, &pull) && attempt+1 < len(policies) {
			fmt.Fprintf(log, "WARNING: Failed to pull image %q for container %q with policy %q: %s\n",
				k.image, buildContainerName, policies[attempt], pull.message)
			k.cleanup()
			continue
		}
		if (err != nil || code != 0) && k.pod != nil {
			if show, set := k.settings.boolean("print_pod_warning_events"); show || !set {
				k.logWarningEvents(ctx)
			}
		}
		k.watcher.stop()
		k.cleanup()
		return code, err
	}
}

// logWarningEvents is logPodWarningEvents (print_pod_warning_events, on by default): after a failed
// stage, the pod's Warning events in the job log; a failure to list them is only a debug message there.
func (k *kubeRun) logWarningEvents(ctx context.Context) {
	if ctx.Err() != nil {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
	}
	var events struct {
		Items []struct {
			Message        string `json:"message"`
			LastTimestamp  string `json:"lastTimestamp"`
			EventTime      string `json:"eventTime"`
			FirstTimestamp string `json:"firstTimestamp"`
		} `json:"items"`
	}
	query := url.Values{"fieldSelector": {"involvedObject.name=" + k.pod.Metadata.Name + ",type=Warning"}, "limit": {"200"}}
	if err := k.api.call(ctx, http.MethodGet, k.namespacePath("events"), query, nil, &events); err != nil {
		return
	}
	when := func(i int) string {
		for _, stamp := range []string{events.Items[i].LastTimestamp, events.Items[i].EventTime, events.Items[i].FirstTimestamp} {
			if stamp != "" {
				return stamp
			}
		}
		return ""
	}
	order := make([]int, len(events.Items))
	for i := range order {
		order[i] = i
	}
	sort.SliceStable(order, func(a, b int) bool { return when(order[a]) < when(order[b]) })
	for _, i := range order {
		fmt.Fprintf(k.log, "WARNING: Event retrieved from the cluster: %s\n", events.Items[i].Message)
	}
}

// prepare is Prepare: defaults checked, the client made, the pod watcher started.
func (k *kubeRun) prepare(ctx context.Context) error {
	k.legacy = k.featureFlag("FF_USE_LEGACY_KUBERNETES_EXECUTION_STRATEGY")
	k.image = k.job.Image.Name
	if k.image == "" {
		if k.image = k.settings.str("image"); k.image == "" {
			return fmt.Errorf("check defaults error: no image specified and no default set in config")
		}
	}
	k.namespace = k.settings.str("namespace")
	if perJob, _ := k.settings.boolean("namespace_per_job"); perJob {
		k.namespace = fmt.Sprintf("ci-job-%d", k.job.ID)
	}
	if k.namespace == "" {
		fmt.Fprintln(k.log, "WARNING: Namespace is empty, therefore assuming 'default'.")
		k.namespace = "default"
	}
	fmt.Fprintln(k.log, "Using Kubernetes namespace:", k.namespace)
	api, err := newKubeClient(k.settings)
	if err != nil {
		return fmt.Errorf("getting Kubernetes config: %w", err)
	}
	k.api = api
	k.interval = time.Duration(k.settings.integer("poll_interval", 3)) * time.Second
	k.attempts = k.settings.integer("poll_timeout", 180) / k.settings.integer("poll_interval", 3)
	k.unique = projectUniqueName(k.runner, k.job)
	k.labels = k.buildLabels()
	fmt.Fprintf(k.log, "Using Kubernetes executor with image %s ...\n", k.image)
	if !k.legacy {
		fmt.Fprintln(k.log, "Using attach strategy to execute scripts...")
	}
	k.watcher = startPodWatcher(ctx, k.api, k.namespace, k.labels, k.log)
	return nil
}

// featureFlag is Build.IsFeatureFlagOn: the job's variable, else the runner's [runners.feature_flags].
func (k *kubeRun) featureFlag(name string) bool {
	if value := k.job.variable(name); value != "" {
		return isTrue(value)
	}
	return k.runner.featureFlag(name)
}

func (k *kubeRun) buildLabels() map[string]string {
	labels := map[string]string{
		"pod": sanitizeLabel(k.unique),
		"project." + runnerLabelNamespace + "/id":             strconv.FormatInt(k.job.JobInfo.ProjectID, 10),
		"project." + runnerLabelNamespace + "/namespace-id":   sanitizeLabel(k.job.variable("CI_PROJECT_NAMESPACE_ID")),
		"project." + runnerLabelNamespace + "/name":           sanitizeLabel(k.job.JobInfo.ProjectName),
		"project." + runnerLabelNamespace + "/namespace":      sanitizeLabel(k.job.variable("CI_PROJECT_NAMESPACE")),
		"project." + runnerLabelNamespace + "/root-namespace": sanitizeLabel(k.job.variable("CI_PROJECT_ROOT_NAMESPACE")),
		"job." + runnerLabelNamespace + "/pod":                sanitizeLabel(k.unique),
		"manager." + runnerLabelNamespace + "/name":           sanitizeLabel(k.runner.Name),
		"manager." + runnerLabelNamespace + "/id-short":       sanitizeLabel(shortToken(k.runner.Token)),
	}
	for key, value := range k.settings.table("pod_labels") {
		if !runnerLabelPattern.MatchString(key) {
			labels[key] = sanitizeLabel(value)
		}
	}
	return labels
}

func (k *kubeRun) namespacePath(resource string) string {
	return "/api/v1/namespaces/" + url.PathEscape(k.namespace) + "/" + resource
}

// run is one attempt of Run: the pod set up (ensurePodsConfigured, within the first stage, hence
// build.go's "prepare environment: …" around its errors), then the job's script.
func (k *kubeRun) run(ctx context.Context, pullPolicy string) (int, error) {
	if err := k.ensurePod(ctx, pullPolicy); err != nil {
		return 0, fmt.Errorf("prepare environment: %w. Check https://docs.gitlab.com/runner/shells/#shell-profile-loading for more information", err)
	}
	if k.legacy {
		return k.runWithExec(ctx)
	}
	return k.runWithAttach(ctx)
}

func (k *kubeRun) ensurePod(ctx context.Context, pullPolicy string) error {
	if err := k.setupNamespace(ctx); err != nil {
		return fmt.Errorf("setting up build namespace: %w", err)
	}
	if err := k.setupCredentials(ctx); err != nil {
		return fmt.Errorf("setting up credentials: %w", err)
	}
	if err := k.setupPod(ctx, pullPolicy); err != nil {
		return fmt.Errorf("setting up build pod: %w", err)
	}
	if err := k.waitForPod(ctx); err != nil {
		return err
	}
	if k.legacy {
		return nil
	}
	logFile := k.logFile()
	if err := k.saveScript(ctx, detectShellScriptName, detectShellScript, "touch "+logFile, "(chmod 777 "+logFile+" || true)"); err != nil {
		return fmt.Errorf("setting up trapping scripts on emptyDir: %w", err)
	}
	return nil
}

func (k *kubeRun) setupNamespace(ctx context.Context) error {
	if perJob, _ := k.settings.boolean("namespace_per_job"); !perJob {
		return nil
	}
	body := map[string]any{"apiVersion": "v1", "kind": "Namespace", "metadata": map[string]any{"name": k.namespace}}
	if err := k.api.call(ctx, http.MethodPost, "/api/v1/namespaces", nil, body, nil); err != nil {
		return fmt.Errorf("failed to create namespace: %w", err)
	}
	return nil
}

// setupCredentials makes the job's registry credentials a kubernetes.io/dockercfg Secret, as
// setupCredentials does for the job payload's credentials of type registry.
func (k *kubeRun) setupCredentials(ctx context.Context) error {
	configs := map[string]map[string]string{}
	for _, credential := range k.job.Credentials {
		if credential.Type != "registry" {
			continue
		}
		configs[credential.URL] = map[string]string{
			"username": credential.Username, "password": credential.Password, "serveraddress": credential.URL,
			"auth": base64.StdEncoding.EncodeToString([]byte(credential.Username + ":" + credential.Password)),
		}
	}
	if len(configs) == 0 {
		return nil
	}
	content, err := json.Marshal(configs)
	if err != nil {
		return err
	}
	secret := map[string]any{
		"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockercfg",
		"metadata": map[string]any{"name": resourceName(k.unique), "namespace": k.namespace},
		"data":     map[string]string{".dockercfg": base64.StdEncoding.EncodeToString(content)},
	}
	var created map[string]any
	err = k.api.call(ctx, http.MethodPost, k.namespacePath("secrets"), nil, secret, &created)
	if isConflict(err) {
		name := secret["metadata"].(map[string]any)["name"].(string)
		err = k.api.call(ctx, http.MethodGet, k.namespacePath("secrets/"+url.PathEscape(name)), nil, nil, &created)
	}
	if err != nil {
		return err
	}
	k.secret = created
	return nil
}

func (k *kubeRun) secretName() string {
	metadata, _ := k.secret["metadata"].(map[string]any)
	name, _ := metadata["name"].(string)
	return name
}

// checkResources is checkDependantResources: the service account and the image pull secrets must
// exist (a failed get, 403 included, counts as missing), checked up to
// resource_availability_check_max_attempts times 5 s apart; 0 (the default) turns the check off.
func (k *kubeRun) checkResources(ctx context.Context) error {
	attempts := k.settings.integer("resource_availability_check_max_attempts", 0)
	if attempts == 0 {
		return nil
	}
	check := func(kind, resource, name string) error {
		if name == "" {
			return nil
		}
		for attempt := -1; attempt < attempts; attempt++ {
			if k.api.call(ctx, http.MethodGet, k.namespacePath(resource+"/"+url.PathEscape(name)), nil, nil, nil) == nil {
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(5 * time.Second):
			}
		}
		return fmt.Errorf("Timed out while waiting for %s/%s to be present in the cluster", kind, name)
	}
	if err := check("ServiceAccount", "serviceaccounts", k.settings.str("service_account")); err != nil {
		return err
	}
	for _, name := range k.settings.list("image_pull_secrets") {
		if err := check("ImagePullSecret", "secrets", name); err != nil {
			return err
		}
	}
	return nil
}

func (k *kubeRun) scriptsDir() string {
	return fmt.Sprintf("%s/scripts-%d-%d", strings.TrimRight(k.settings.str("scripts_base_dir"), "/\\"), k.job.JobInfo.ProjectID, k.job.ID)
}

func (k *kubeRun) logsDir() string {
	return fmt.Sprintf("%s/logs-%d-%d", strings.TrimRight(k.settings.str("logs_base_dir"), "/\\"), k.job.JobInfo.ProjectID, k.job.ID)
}

func (k *kubeRun) logFile() string { return k.logsDir() + "/output.log" }

// podSpec is preparePodConfig's pod, with the build container only.
func (k *kubeRun) podSpec(name, pullPolicy string) map[string]any {
	annotations := map[string]string{
		"job." + runnerLabelNamespace + "/id":         strconv.FormatInt(k.job.ID, 10),
		"job." + runnerLabelNamespace + "/url":        jobURL(k.job),
		"job." + runnerLabelNamespace + "/sha":        k.job.GitInfo.Sha,
		"job." + runnerLabelNamespace + "/before_sha": k.job.GitInfo.BeforeSha,
		"job." + runnerLabelNamespace + "/ref":        k.job.GitInfo.Ref,
		"job." + runnerLabelNamespace + "/name":       k.job.JobInfo.Name,
		"job." + runnerLabelNamespace + "/timeout":    k.buildTimeout().String(),
		"project." + runnerLabelNamespace + "/id":     strconv.FormatInt(k.job.JobInfo.ProjectID, 10),
	}
	for key, value := range k.settings.table("pod_annotations") {
		annotations[key] = value
	}
	env := []map[string]string{
		{"name": "CI", "value": "true"},
		{"name": "CI_JOB_ID", "value": strconv.FormatInt(k.job.ID, 10)},
		{"name": "CI_SERVER_URL", "value": k.runner.URL},
		{"name": "CI_BUILDS_DIR", "value": "/builds"},
	}
	for _, variable := range k.job.Variables {
		env = append(env, map[string]string{"name": variable.Key, "value": variable.Value})
	}
	var mounts []map[string]string
	volumes := []map[string]any{{"name": "repo", "emptyDir": map[string]any{}}}
	if !k.legacy {
		mounts = append(mounts, map[string]string{"name": "scripts", "mountPath": k.scriptsDir()},
			map[string]string{"name": "logs", "mountPath": k.logsDir()})
		volumes = append(volumes, map[string]any{"name": "scripts", "emptyDir": map[string]any{}},
			map[string]any{"name": "logs", "emptyDir": map[string]any{}})
	}
	mounts = append(mounts, map[string]string{"name": "repo", "mountPath": "/builds"})
	security := map[string]any{"capabilities": map[string]any{"drop": []string{"NET_RAW"}}}
	if privileged, ok := k.settings.boolean("privileged"); ok {
		security["privileged"] = privileged
	}
	if escalation, ok := k.settings.boolean("allow_privilege_escalation"); ok {
		security["allowPrivilegeEscalation"] = escalation
	}
	container := map[string]any{
		"name": buildContainerName, "image": k.image,
		"command": []string{"sh", "-c", detectShellScript},
		"env":     env, "volumeMounts": mounts, "securityContext": security, "stdin": true,
	}
	if pullPolicy != "" {
		container["imagePullPolicy"] = pullPolicy
	}
	resources := map[string]any{}
	for kind, keys := range map[string][3]string{
		"limits":   {"cpu_limit", "memory_limit", "ephemeral_storage_limit"},
		"requests": {"cpu_request", "memory_request", "ephemeral_storage_request"},
	} {
		list := map[string]string{}
		for i, resource := range []string{"cpu", "memory", "ephemeral-storage"} {
			if value := k.settings.str(keys[i]); value != "" {
				list[resource] = value
			}
		}
		if len(list) > 0 {
			resources[kind] = list
		}
	}
	if len(resources) > 0 {
		container["resources"] = resources
	}
	spec := map[string]any{
		"volumes": volumes, "containers": []any{container}, "restartPolicy": "Never",
	}
	if account := k.settings.str("service_account"); account != "" {
		spec["serviceAccountName"] = account
	}
	if selector := k.settings.table("node_selector"); selector != nil {
		spec["nodeSelector"] = selector
	}
	var tolerations []map[string]string
	for key, effect := range k.settings.table("node_tolerations") {
		toleration := map[string]string{"key": key, "operator": "Exists", "effect": effect}
		if name, value, ok := strings.Cut(key, "="); ok {
			toleration["key"], toleration["value"], toleration["operator"] = name, value, "Equal"
		}
		tolerations = append(tolerations, toleration)
	}
	if len(tolerations) > 0 {
		spec["tolerations"] = tolerations
	}
	var pullSecrets []map[string]string
	if use, _ := k.settings.boolean("use_service_account_image_pull_secrets"); !use {
		for _, secret := range k.settings.list("image_pull_secrets") {
			pullSecrets = append(pullSecrets, map[string]string{"name": secret})
		}
		if k.secret != nil {
			pullSecrets = append(pullSecrets, map[string]string{"name": k.secretName()})
		}
	}
	if len(pullSecrets) > 0 {
		spec["imagePullSecrets"] = pullSecrets
	}
	if seconds := k.settings.integer("pod_termination_grace_period_seconds", 0); seconds > 0 {
		spec["terminationGracePeriodSeconds"] = seconds
	}
	for key, field := range map[string]string{"scheduler_name": "schedulerName", "runtime_class_name": "runtimeClassName", "priority_class_name": "priorityClassName"} {
		if value := k.settings.str(key); value != "" {
			spec[field] = value
		}
	}
	return map[string]any{
		"apiVersion": "v1", "kind": "Pod",
		"metadata": map[string]any{"name": name, "namespace": k.namespace, "labels": k.labels, "annotations": annotations},
		"spec":     spec,
	}
}

func (k *kubeRun) buildTimeout() time.Duration {
	if k.job.RunnerInfo.Timeout <= 0 {
		return time.Hour
	}
	return time.Duration(k.job.RunnerInfo.Timeout) * time.Second
}

// setupPod is setupBuildPod: the feature check, the dependent resources, the pod, and the credentials
// Secret handed to the pod as its owner.
func (k *kubeRun) setupPod(ctx context.Context, pullPolicy string) error {
	if err := k.api.call(ctx, http.MethodGet, "/version", nil, nil, nil); err != nil {
		return err
	}
	if err := k.checkResources(ctx); err != nil {
		return err
	}
	name := resourceName(k.unique)
	k.watcher.podName.Store(name)
	var created podObject
	err := k.api.call(ctx, http.MethodPost, k.namespacePath("pods"), nil, k.podSpec(name, pullPolicy), &created)
	if isConflict(err) {
		err = k.api.call(ctx, http.MethodGet, podPath(k.namespace, name), nil, nil, &created)
	}
	if err != nil {
		return err
	}
	k.pod = &created
	if k.secret != nil {
		k.secret["metadata"].(map[string]any)["ownerReferences"] = []map[string]string{
			{"apiVersion": "v1", "kind": "Pod", "name": created.Metadata.Name, "uid": created.Metadata.UID},
		}
		var updated map[string]any
		if err := k.api.call(ctx, http.MethodPut, k.namespacePath("secrets/"+url.PathEscape(k.secretName())), nil, k.secret, &updated); err != nil {
			return fmt.Errorf("error setting ownerReferences: %w", err)
		}
		k.secret, k.owned = updated, true
	}
	return nil
}

func (k *kubeRun) getPod(ctx context.Context) (*podObject, error) {
	var pod podObject
	if err := k.api.call(ctx, http.MethodGet, podPath(k.namespace, k.pod.Metadata.Name), nil, nil, &pod); err != nil {
		return nil, err
	}
	return &pod, nil
}

// waitForPod is waitForPodRunning: a get every poll_interval until the pod runs with its build
// container ready, for at most poll_timeout.
func (k *kubeRun) waitForPod(ctx context.Context) error {
	for i := 0; i <= k.attempts; i++ {
		pod, err := k.getPod(ctx)
		if err != nil {
			return fmt.Errorf("waiting for pod running: %w", err)
		}
		switch pod.Status.Phase {
		case "Running":
			for _, status := range pod.Status.ContainerStatuses {
				if status.Name == buildContainerName && status.Ready {
					return nil
				}
			}
		case "Succeeded":
			return fmt.Errorf("waiting for pod running: pod already succeeded before it begins running")
		case "Failed":
			return fmt.Errorf("waiting for pod running: pod status is failed")
		}
		statuses := append(append([]containerStatus{}, pod.Status.ContainerStatuses...), pod.Status.InitContainerStatuses...)
		if err := terminalContainerError(statuses); err != nil {
			return fmt.Errorf("waiting for pod running: %w", err)
		}
		fmt.Fprintf(k.log, "Waiting for pod %s/%s to be running, status is %s\n", k.namespace, pod.Metadata.Name, pod.Status.Phase)
		for _, condition := range pod.Status.Conditions {
			if condition.Reason != "" {
				fmt.Fprintf(k.log, "\t%s: %q\n", condition.Reason, condition.Message)
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case err := <-k.watcher.errs:
			return err
		case <-time.After(k.interval):
		}
	}
	return fmt.Errorf("waiting for pod running: timed out waiting for pod to start")
}

// runningCheck is the get before each exec and attach (ExecOptions.Run, AttachOptions.Run).
func (k *kubeRun) runningCheck(ctx context.Context) error {
	pod, err := k.getPod(ctx)
	if err != nil {
		return fmt.Errorf("couldn't get pod details: %w", err)
	}
	if pod.Status.Phase != "Running" {
		return fmt.Errorf("pod %q (on namespace %q) is not running and cannot execute commands; current phase is %q",
			pod.Metadata.Name, k.namespace, pod.Status.Phase)
	}
	return nil
}

// saveScript writes a script into the scripts volume through the build container's shell
// (saveScriptOnEmptyDir: an exec of the shell with the saving commands on stdin).
func (k *kubeRun) saveScript(ctx context.Context, name, script string, extra ...string) error {
	if err := k.runningCheck(ctx); err != nil {
		return err
	}
	code, err := k.api.exec(ctx, k.namespace, k.pod.Metadata.Name, buildContainerName,
		[]string{"sh", "-c", detectShellScript}, []byte(k.saveCommands(name, script, extra...)), k.log, k.log)
	if err == nil && code != 0 {
		err = fmt.Errorf("command terminated with exit code %d", code)
	}
	return err
}

// saveCommands are the shell commands that save a script (GenerateSaveScript; printf rather than the
// bash shell's echo of an ANSI-C quoted string, so that any sh keeps backslashes as they are).
func (k *kubeRun) saveCommands(name, script string, extra ...string) string {
	path := k.scriptsDir() + "/" + name
	commands := append(append([]string{}, extra...),
		"touch "+path, "chmod 777 "+path, fmt.Sprintf("printf '%%s\\n' %s > %s", shellQuote(script), path), "exit")
	return strings.Join(commands, "\n") + "\n"
}

// stageScript is the step_script stage: the exit status trap, then the job's script in the builds
// directory.
func (k *kubeRun) stageScript() string {
	return exitStatusTrap + "cd /builds\n" + jobScript(k.job)
}

// attachCommand starts a saved stage in the background of the build container's shell, its output
// appended to the log file (getContainerInfo's command, written to the shell's stdin).
func (k *kubeRun) attachCommand(stage string) string {
	return fmt.Sprintf("sh -c '(%s/%s %s/%s 2>&1 | tee -a %s) &'\n",
		k.scriptsDir(), detectShellScriptName, k.scriptsDir(), stage, k.logFile())
}

func shellQuote(text string) string {
	return "'" + strings.ReplaceAll(text, "'", `'\''`) + "'"
}

// runWithAttach is the attach strategy: the stage script saved, the log file followed, the stage
// started on the build shell's stdin, and its exit status read from the log.
func (k *kubeRun) runWithAttach(ctx context.Context) (int, error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	status := make(chan int, 1)
	opened := make(chan struct{})
	logsDone := make(chan error, 1)
	go func() { logsDone <- k.followLog(ctx, opened, status) }()
	select {
	case <-opened:
	case err := <-logsDone:
		return 0, fmt.Errorf("reading the job log: %w", err)
	}

	fmt.Fprintf(k.log, "Executing %q stage of the job script\n", stepScriptName)
	if err := k.saveScript(ctx, stepScriptName, k.stageScript()); err != nil {
		return 0, err
	}
	if err := k.runningCheck(ctx); err != nil {
		return 0, err
	}
	command := k.attachCommand(stepScriptName)
	attached := make(chan error, 1)
	go func() { attached <- k.api.attach(ctx, k.namespace, k.pod.Metadata.Name, buildContainerName, command) }()
	podStatus := k.watchPodStatus(ctx)
	for {
		select {
		case code := <-status:
			return code, nil
		case err := <-attached:
			if err != nil {
				return 0, err
			}
			attached = nil
		case err := <-logsDone:
			select {
			case code := <-status: // the status line came just before the stream ended
				return code, nil
			default:
			}
			return 0, fmt.Errorf("reading the job log: %w", err)
		case err := <-podStatus:
			return 0, err
		case err := <-k.watcher.errs:
			return 0, err
		case <-ctx.Done():
			return 0, fmt.Errorf("build aborted: %w", ctx.Err())
		}
	}
}

// followLog follows the log file (the real runner's read-logs in the helper container; here tail in
// the build container), copies its lines into the job log and hands over the exit status line.
func (k *kubeRun) followLog(ctx context.Context, opened chan<- struct{}, status chan<- int) error {
	query := url.Values{"container": {buildContainerName}, "command": {"sh", "-c", "tail -n +1 -f " + k.logFile()},
		"stdout": {"true"}, "stderr": {"true"}}
	conn, err := k.api.openChannels(ctx, podPath(k.namespace, k.pod.Metadata.Name)+"/exec", query)
	if err != nil {
		return err
	}
	defer conn.Close()
	close(opened)
	lines := &statusLines{out: k.log, status: status}
	_, err = conn.streamStatus(lines, k.log)
	lines.flush()
	if err == nil {
		err = errors.New("the log stream ended")
	}
	return err
}

// statusLines copies lines to out, except the stage's exit status line, whose code it sends.
type statusLines struct {
	mu      sync.Mutex
	out     io.Writer
	status  chan<- int
	partial []byte
	sent    bool
}

func (s *statusLines) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.partial = append(s.partial, p...)
	for {
		end := bytes.IndexByte(s.partial, '\n')
		if end < 0 {
			return len(p), nil
		}
		line := s.partial[:end+1]
		s.partial = s.partial[end+1:]
		var exit struct {
			Code   *int    `json:"command_exit_code"`
			Script *string `json:"script"`
		}
		if json.Unmarshal(bytes.TrimSpace(line), &exit) == nil && exit.Code != nil {
			if !s.sent {
				s.sent = true
				s.status <- *exit.Code
			}
			continue
		}
		_, _ = s.out.Write(line)
	}
}

func (s *statusLines) flush() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.partial) > 0 {
		_, _ = s.out.Write(s.partial)
		s.partial = nil
	}
}

// watchPodStatus is watchPodStatus: a get every poll_interval while a stage runs; the pod leaving
// Running or the build container ending fails the job.
func (k *kubeRun) watchPodStatus(ctx context.Context) <-chan error {
	errs := make(chan error, 1)
	go func() {
		ticker := time.NewTicker(k.interval)
		defer ticker.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-ticker.C:
			}
			pod, err := k.getPod(ctx)
			switch {
			case isNotFound(err):
				errs <- err
				return
			case err != nil:
				if ctx.Err() == nil {
					fmt.Fprintln(k.log, "WARNING: Getting job pod status", err)
				}
				continue
			case pod.Status.Phase != "Running":
				errs <- fmt.Errorf("pod %q status is %q", pod.Metadata.Name, pod.Status.Phase)
				return
			}
			for _, status := range pod.Status.ContainerStatuses {
				if terminated := status.State.Terminated; terminated != nil && status.Name == buildContainerName {
					errs <- fmt.Errorf("Error in container %s: exit code: %d, reason: '%s'", status.Name, terminated.ExitCode, terminated.Reason)
					return
				}
			}
		}
	}()
	return errs
}

// runWithExec is the legacy exec strategy: the script on the stdin of an exec of the build
// container's shell, its output and exit code from the exec stream.
func (k *kubeRun) runWithExec(ctx context.Context) (int, error) {
	if err := k.runningCheck(ctx); err != nil {
		return 0, err
	}
	fmt.Fprintf(k.log, "Executing %q stage of the job script\n", stepScriptName)
	type result struct {
		code int
		err  error
	}
	done := make(chan result, 1)
	go func() {
		code, err := k.api.exec(ctx, k.namespace, k.pod.Metadata.Name, buildContainerName,
			[]string{"sh", "-c", detectShellScript}, []byte("cd /builds\n"+jobScript(k.job)), k.log, k.log)
		done <- result{code, err}
	}()
	select {
	case r := <-done:
		return r.code, r.err
	case err := <-k.watcher.errs:
		return 0, err
	case <-ctx.Done():
		return 0, fmt.Errorf("build aborted: %w", ctx.Err())
	}
}

// cleanup is cleanupResources: the pod deleted (in the background, with cleanup_grace_period_seconds),
// a Secret no pod owns deleted, the job's namespace deleted; with a context of its own, as the job's may
// be over.
func (k *kubeRun) cleanup() {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if k.pod != nil {
		options := map[string]any{"apiVersion": "v1", "kind": "DeleteOptions", "propagationPolicy": "Background"}
		if seconds, ok := k.settings["cleanup_grace_period_seconds"].(int64); ok {
			options["gracePeriodSeconds"] = seconds
		}
		if err := k.api.call(ctx, http.MethodDelete, podPath(k.namespace, k.pod.Metadata.Name), nil, options, nil); err != nil {
			fmt.Fprintf(k.log, "ERROR: Error cleaning up pod: %s\n", err)
		}
		k.pod = nil
	}
	if k.secret != nil && !k.owned {
		if err := k.api.call(ctx, http.MethodDelete, k.namespacePath("secrets/"+url.PathEscape(k.secretName())), nil, nil, nil); err != nil {
			fmt.Fprintf(k.log, "ERROR: Error cleaning up secrets: %s\n", err)
		}
	}
	k.secret, k.owned = nil, false
	if perJob, _ := k.settings.boolean("namespace_per_job"); perJob {
		if err := k.api.call(ctx, http.MethodDelete, "/api/v1/namespaces/"+url.PathEscape(k.namespace), nil, nil, nil); err != nil {
			fmt.Fprintf(k.log, "ERROR: Error tearing down namespace: failed to delete namespace: %s\n", err)
		}
	}
}
