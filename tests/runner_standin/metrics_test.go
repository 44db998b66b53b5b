package main

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The series the health check reads carries the real runner's labels (network/api_requests_collector.go
// at v18.9.0: runner, system_id, endpoint, status, method), under the real HELP and TYPE lines.
func TestRequestStatusesCarryTheRunnersLabels(t *testing.T) {
	gitlab := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	defer gitlab.Close()
	m := newMetrics()
	api, err := newClient(RunnerConfig{Name: "a", URL: gitlab.URL}, "", "s_0123456789ab", m)
	if err != nil {
		t.Fatal(err)
	}
	token := "glrt-t1_abcdefghijklmnop"
	if _, err := api.postJSON("jobs/request", token, map[string]string{"token": token}, "request_job"); err != nil {
		t.Fatal(err)
	}
	got := m.render()
	for _, want := range []string{
		"# HELP gitlab_runner_api_request_statuses_total The total number of API requests made by GitLab Runner, partitioned by runner, system_id, endpoint, status and method.\n",
		"# TYPE gitlab_runner_api_request_statuses_total counter\n",
		`gitlab_runner_api_request_statuses_total{endpoint="request_job",method="post",runner="abcdefghi",status="204",system_id="s_0123456789ab"} 1` + "\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("metrics lack %q:\n%s", want, got)
		}
	}
}

// A job request that gets no answer is counted with status -1, as the runner counts it.
func TestARequestWithNoAnswerIsCountedAsMinusOne(t *testing.T) {
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := listener.Addr().String()
	listener.Close()
	m := newMetrics()
	api, err := newClient(RunnerConfig{Name: "a", URL: "http://" + closed}, "", "s_0123456789ab", m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := api.postJSON("jobs/request", "glrt-t1_abcdefghijk", map[string]string{}, "request_job"); err == nil {
		t.Fatal("a request to a closed port succeeded")
	}
	want := `gitlab_runner_api_request_statuses_total{endpoint="request_job",method="post",runner="abcdefghi",status="-1",system_id="s_0123456789ab"} 1`
	if got := m.render(); !strings.Contains(got, want) {
		t.Errorf("metrics lack %q:\n%s", want, got)
	}
}

func freeAddress(t *testing.T) string {
	t.Helper()
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	return listener.Addr().String()
}

func scrape(address string) (string, error) {
	client := http.Client{Timeout: 2 * time.Second}
	answer, err := client.Get("http://" + address + "/metrics")
	if err != nil {
		return "", err
	}
	defer answer.Body.Close()
	body, err := io.ReadAll(answer.Body)
	return string(body), err
}

// listen_address is bound when `run` starts and never again: a reloaded config.toml with another
// address leaves the metrics where they were (commands/multi.go at v18.9.0: setupMetricsAndDebugServer
// runs once, reloadConfig does not touch it).
func TestListenAddressIsBoundAtStartOnly(t *testing.T) {
	first, second := freeAddress(t), freeAddress(t)
	path := filepath.Join(t.TempDir(), "config.toml")
	write := func(address string, at time.Time) {
		if err := os.WriteFile(path, []byte(fmt.Sprintf("concurrent = 1\nlisten_address = %q\n", address)), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chtimes(path, at, at); err != nil {
			t.Fatal(err)
		}
	}
	write(first, time.Now().Add(-time.Minute))
	done := make(chan error, 1)
	go func() { done <- run(map[string]string{"config": path}) }()
	defer func() {
		_ = syscall.Kill(os.Getpid(), syscall.SIGTERM) // run's own signal handler ends it
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Error("run did not stop")
		}
	}()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if _, err := scrape(first); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no metrics on %s", first)
		}
		time.Sleep(100 * time.Millisecond)
	}
	write(second, time.Now())
	deadline = time.Now().Add(4 * reloadConfigInterval)
	for {
		got, err := scrape(first)
		if err != nil {
			t.Fatalf("the metrics left %s after the reload: %v", first, err)
		}
		if strings.Contains(got, "gitlab_runner_configuration_loaded_total 2\n") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("config.toml was not reloaded:\n%s", got)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if _, err := scrape(second); err == nil {
		t.Errorf("the reload bound %s", second)
	}
}
