package main

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"
)

// flaky answers `status` (with `header`) to the first `failures` requests, then 204.
func flaky(t *testing.T, failures int, status int, header http.Header) (*client, *[]time.Time) {
	t.Helper()
	var mu sync.Mutex
	var seen []time.Time
	var ids []string
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		seen = append(seen, time.Now())
		ids = append(ids, r.Header.Get("X-Request-Id"))
		if len(ids) > 1 && ids[len(ids)-1] != ids[0] {
			t.Errorf("attempt %d of one call carried another correlation id", len(ids))
		}
		n := len(seen)
		mu.Unlock()
		if n <= failures {
			for key, values := range header {
				w.Header()[key] = values
			}
			w.WriteHeader(status)
			return
		}
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(server.Close)
	api, err := newClient(RunnerConfig{Name: "r", URL: server.URL}, "/nonexistent/config.toml", "s_1", newMetrics())
	if err != nil {
		t.Fatal(err)
	}
	return api, &seen
}

func TestAnswersTheRunnerRetriesAreRetriedUpToFiveAttempts(t *testing.T) {
	for _, status := range []int{408, 429, 500, 502, 503, 504, 520} {
		api, seen := flaky(t, 10, status, nil)
		answer, err := api.postJSON("jobs/request", "glrt-t1_abcdefghijkl", map[string]string{}, "request_job")
		if err != nil {
			t.Fatal(err)
		}
		if answer.status != status || len(*seen) != retryMaxAttempts {
			t.Fatalf("status %d: answer %d after %d attempts, want it after %d", status, answer.status, len(*seen), retryMaxAttempts)
		}
		metrics := api.metrics.render()
		if !strings.Contains(metrics, `endpoint="request_job",method="post",runner="abcdefghi",status="`) ||
			!strings.Contains(metrics, `gitlab_runner_api_request_retries_total{method="POST",path="/api/v4/jobs/request"} 5`) {
			t.Fatalf("status %d: metrics\n%s", status, metrics)
		}
		// The status is recorded once, for the final answer.
		if !strings.Contains(metrics, fmt.Sprintf(`status="%d",system_id="s_1"} 1`, status)) || strings.Count(metrics, "request_job") != 1 {
			t.Fatalf("status %d: metrics\n%s", status, metrics)
		}
	}
}

func TestOtherAnswersAreNotRetried(t *testing.T) {
	for _, status := range []int{400, 401, 403, 404, 409, 422, 501, 505} {
		api, seen := flaky(t, 10, status, nil)
		answer, err := api.postJSON("jobs/request", "glrt-x", map[string]string{}, "request_job")
		if err != nil || answer.status != status || len(*seen) != 1 {
			t.Fatalf("status %d: answer %v err %v after %d attempts, want one", status, answer, err, len(*seen))
		}
	}
}

func TestBackoffBetweenAttemptsIsExponentialWithJitter(t *testing.T) {
	api, seen := flaky(t, 4, http.StatusBadGateway, nil)
	answer, err := api.postJSON("runners/verify", "glrt-x", map[string]string{}, "")
	if err != nil || answer.status != http.StatusNoContent || len(*seen) != 5 {
		t.Fatalf("answer %v err %v after %d attempts", answer, err, len(*seen))
	}
	// Waits: [100ms,100ms], [100ms,200ms], [100ms,400ms], [100ms,800ms] (plus scheduling).
	for i, most := range []time.Duration{100, 200, 400, 800} {
		gap := (*seen)[i+1].Sub((*seen)[i])
		if gap < 100*time.Millisecond || gap > most*time.Millisecond+150*time.Millisecond {
			t.Fatalf("wait %d was %s, want 100ms..%dms", i+1, gap, most)
		}
	}
	b := &backoff{}
	for attempt := 0; attempt < 20; attempt++ {
		if d := b.next(); d < backOffMinDelay || d > backOffMaxDelay {
			t.Fatalf("attempt %d: %s out of [%s, %s]", attempt, d, backOffMinDelay, backOffMaxDelay)
		}
	}
}

func TestRetryAfterAndRateLimitResetTimeAreWaited(t *testing.T) {
	api, seen := flaky(t, 1, http.StatusTooManyRequests, http.Header{"Retry-After": {"1"}})
	if _, err := api.postJSON("jobs/request", "glrt-x", map[string]string{}, "request_job"); err != nil {
		t.Fatal(err)
	}
	if gap := (*seen)[1].Sub((*seen)[0]); len(*seen) != 2 || gap < time.Second {
		t.Fatalf("%d attempts, waited %s, want 2 attempts a second apart", len(*seen), gap)
	}
	reset := http.Header{"Ratelimit-Resettime": {time.Now().Add(2 * time.Second).UTC().Format(time.RFC1123)}, "Retry-After": {"0"}}
	if d := waitTime(reset, &backoff{}); d < time.Second || d > 2*time.Second {
		t.Fatalf("RateLimit-ResetTime: waited %s, want up to 2s", d)
	}
	if d := waitTime(http.Header{"Retry-After": {"soon"}}, &backoff{}); d != backOffMinDelay {
		t.Fatalf("an unparsable Retry-After falls back to the backoff, got %s", d)
	}
}

func TestAWaitEndsWithItsContext(t *testing.T) {
	api, seen := flaky(t, 10, http.StatusTooManyRequests, http.Header{"Retry-After": {"30"}})
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	started := time.Now()
	if _, err := api.postJSONContext(ctx, "jobs/request", "glrt-x", map[string]string{}, "request_job"); err == nil {
		t.Fatal("an interrupted wait must end the request with an error")
	}
	if time.Since(started) > 5*time.Second || len(*seen) != 1 {
		t.Fatalf("%d attempts in %s", len(*seen), time.Since(started))
	}
}

func TestOnlyForbiddenJobRequestsMakeARunnerUnhealthy(t *testing.T) {
	m := &manager{health: map[string]*healthData{}}
	runner := RunnerConfig{URL: "http://gitlab", Token: "glrt-t1_abcdefghijkl"}
	for i := 0; i < unhealthyRequestsLimit-1; i++ {
		m.markHealth(runner, false)
	}
	if !m.isHealthy(runner) {
		t.Fatal("healthy below the limit")
	}
	m.markHealth(runner, false)
	if m.isHealthy(runner) {
		t.Fatal("unhealthy at the limit")
	}
	m.health[runner.URL+shortToken(runner.Token)].lastCheck = time.Now().Add(-unhealthyInterval - time.Second)
	if !m.isHealthy(runner) || m.health[runner.URL+shortToken(runner.Token)].failures != 0 {
		t.Fatal("tried again after the unhealthy interval, with its count reset")
	}
	m.markHealth(runner, false)
	m.markHealth(runner, true)
	if m.health[runner.URL+shortToken(runner.Token)].failures != 0 {
		t.Fatal("an answered request resets the count")
	}
}
