package main

import (
	"bytes"
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"math/rand"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"time"
)

// client talks to one GitLab instance with the runner's TLS rules: the CA in tls-ca-file, else
// <default config dir>/certs/<host>.crt when present (/etc/gitlab-runner as root, ~/.gitlab-runner
// otherwise, whatever --config says), else the system's roots.
type client struct {
	base     string
	http     *http.Client
	metrics  *metrics
	systemID string
}

func newClient(runner RunnerConfig, configFile, systemID string, m *metrics) (*client, error) {
	parsed, err := url.Parse(runner.URL)
	if err != nil || parsed.Host == "" {
		return nil, fmt.Errorf("runner %s: invalid url", runner.Name)
	}
	caFile := runner.TLSCAFile
	if caFile == "" {
		candidate := filepath.Join(defaultConfigDir(), "certs", parsed.Hostname()+".crt")
		if _, err := os.Stat(candidate); err == nil {
			caFile = candidate
		}
	}
	transport := &http.Transport{}
	if caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return nil, fmt.Errorf("runner %s: reading CA file: %w", runner.Name, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("runner %s: no certificate in %s", runner.Name, caFile)
		}
		transport.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	}
	base := parsed.String()
	for len(base) > 0 && base[len(base)-1] == '/' {
		base = base[:len(base)-1]
	}
	return &client{
		base:     base + "/api/v4/",
		http:     &http.Client{Transport: transport, Timeout: 30 * time.Second},
		metrics:  m,
		systemID: systemID,
	}, nil
}

type response struct {
	status int
	header http.Header
	body   []byte
}

// do sends one request; an endpoint name records its status in the metrics as the runner does. A
// request that got no answer (a network or TLS error) is recorded with status -1, as the runner's
// doMeasuredJSON records the -1 its doJSON returns then (network/gitlab.go and network/client.go at
// v18.9.0); only a client that cannot be made (clientError, -100) is not recorded.
func (c *client) do(method, path string, header http.Header, body []byte, endpoint, token string) (*response, error) {
	return c.doContext(context.Background(), method, path, header, body, endpoint, token)
}

// doContext is do with a context that ends the request and any wait between its attempts. Every
// request goes through the runner's retry requester (network/retry_requester.go, used by its client for
// every call): the answers in retryStatuses are retried, up to retryMaxAttempts attempts in all, after
// RateLimit-ResetTime, else Retry-After (whole seconds), else an exponential backoff with jitter; a
// network error is not retried. The metrics see the final answer once, as the runner's
// APIRequestsCollector observes the whole call, and every attempt in the retries counter.
func (c *client) doContext(ctx context.Context, method, path string, header http.Header, body []byte, endpoint, token string) (*response, error) {
	wait := &backoff{}
	for attempt := 1; ; attempt++ {
		answer, err := c.once(ctx, method, path, header, body)
		if err != nil {
			c.countAttempts(method, path, attempt)
			if endpoint != "" && c.metrics != nil {
				c.metrics.apiStatus(shortToken(token), c.systemID, endpoint, -1, method)
			}
			return nil, err
		}
		if !shouldRetry(answer.status) || attempt >= retryMaxAttempts {
			c.countAttempts(method, path, attempt)
			if endpoint != "" && c.metrics != nil {
				c.metrics.apiStatus(shortToken(token), c.systemID, endpoint, answer.status, method)
			}
			return answer, nil
		}
		delay := waitTime(answer.header, wait)
		logf("INFO", "Waiting before making the next call duration=%s method=%s status=%d", delay, method, answer.status)
		timer := time.NewTimer(delay)
		select {
		case <-timer.C:
		case <-ctx.Done():
			timer.Stop()
			c.countAttempts(method, path, attempt)
			return nil, ctx.Err()
		}
	}
}

func (c *client) once(ctx context.Context, method, path string, header http.Header, body []byte) (*response, error) {
	request, err := http.NewRequestWithContext(ctx, method, c.base+path, bytes.NewReader(body))
	if err != nil {
		return nil, err
	}
	for key, values := range header {
		for _, value := range values {
			request.Header.Add(key, value)
		}
	}
	answer, err := c.http.Do(request)
	if err != nil {
		return nil, err
	}
	defer answer.Body.Close()
	data, err := io.ReadAll(answer.Body)
	if err != nil {
		return nil, err
	}
	return &response{status: answer.StatusCode, header: answer.Header, body: data}, nil
}

// The runner's retry requester (network/retry_requester.go at v18.9.0) and the backoff it uses
// (github.com/jpillora/backoff v1.0.0 with Min 100 ms, Max 60 s, Factor 2, Jitter).
const (
	retryMaxAttempts   = 5
	backOffMinDelay    = 100 * time.Millisecond
	backOffMaxDelay    = 60 * time.Second
	backOffDelayFactor = 2.0
)

var retryStatuses = map[int]bool{
	http.StatusRequestTimeout:      true,
	http.StatusTooManyRequests:     true,
	http.StatusInternalServerError: true,
	http.StatusBadGateway:          true,
	http.StatusServiceUnavailable:  true,
	http.StatusGatewayTimeout:      true,
}

func shouldRetry(status int) bool { return retryStatuses[status] || status >= 512 }

type backoff struct{ attempt float64 }

// next is jpillora/backoff's Duration: min * factor^attempt, jittered uniformly between min and that.
func (b *backoff) next() time.Duration {
	minf := float64(backOffMinDelay)
	durf := minf * math.Pow(backOffDelayFactor, b.attempt)
	b.attempt++
	durf = rand.Float64()*(durf-minf) + minf
	if durf > float64(backOffMaxDelay) {
		return backOffMaxDelay
	}
	if durf < minf {
		return backOffMinDelay
	}
	return time.Duration(durf)
}

// waitTime is calculateWaitTime: the rate limit's reset time, else Retry-After, else the backoff (which
// advances only when it is used).
func waitTime(header http.Header, b *backoff) time.Duration {
	if reset := header.Get("RateLimit-ResetTime"); reset != "" {
		if at, err := time.Parse(time.RFC1123, reset); err == nil && time.Until(at) > 0 {
			return time.Until(at)
		}
	}
	if after := header.Get("Retry-After"); after != "" {
		if seconds, err := strconv.Atoi(after); err == nil && seconds > 0 {
			return time.Duration(seconds) * time.Second
		}
	}
	return b.next()
}

func correlationID() string {
	raw := make([]byte, 16)
	_, _ = crand.Read(raw)
	return hex.EncodeToString(raw)
}

var numericSegment = regexp.MustCompile(`/[0-9]+(/|$)`)

// countAttempts is the runner's gitlab_runner_api_request_retries_total: every attempt of a call
// (the first included), by its normalized path and method.
func (c *client) countAttempts(method, path string, attempts int) {
	if c.metrics == nil {
		return
	}
	uri := c.base + path
	if parsed, err := url.Parse(uri); err == nil {
		uri = parsed.Path
	}
	for numericSegment.MatchString(uri) {
		uri = numericSegment.ReplaceAllString(uri, "/{id}$1")
	}
	c.metrics.add(fmt.Sprintf(`gitlab_runner_api_request_retries_total{method=%q,path=%q}`, method, uri), float64(attempts))
}

func (c *client) postJSON(path string, token string, payload any, endpoint string) (*response, error) {
	return c.sendJSONContext(context.Background(), http.MethodPost, path, token, payload, endpoint)
}

func (c *client) postJSONContext(ctx context.Context, path string, token string, payload any, endpoint string) (*response, error) {
	return c.sendJSONContext(ctx, http.MethodPost, path, token, payload, endpoint)
}

// sendJSON sends a JSON body with the runner token also in the RUNNER-TOKEN header, as
// network.RunnerTokenHeader does.
func (c *client) sendJSON(method, path string, token string, payload any, endpoint string) (*response, error) {
	return c.sendJSONContext(context.Background(), method, path, token, payload, endpoint)
}

func (c *client) sendJSONContext(ctx context.Context, method, path string, token string, payload any, endpoint string) (*response, error) {
	body, err := json.Marshal(payload)
	if err != nil {
		return nil, err
	}
	header := http.Header{"Content-Type": {"application/json"}, "Accept": {"application/json"}}
	if token != "" {
		header.Set("RUNNER-TOKEN", token)
	}
	// One correlation id per call, the same on each of its attempts (network/gitlab.go addCorrelationID).
	header.Set("X-Request-Id", correlationID())
	return c.doContext(ctx, method, path, header, body, endpoint, token)
}

type verifyResponse struct {
	ID             int64     `json:"id"`
	Token          string    `json:"token"`
	TokenExpiresAt time.Time `json:"token_expires_at"`
}

func (c *client) verify(token string) (*verifyResponse, int, error) {
	answer, err := c.postJSON("runners/verify", token, map[string]string{"token": token, "system_id": c.systemID}, "")
	if err != nil {
		return nil, 0, err
	}
	if answer.status != http.StatusOK {
		return nil, answer.status, nil
	}
	var verified verifyResponse
	if err := json.Unmarshal(answer.body, &verified); err != nil {
		return nil, answer.status, fmt.Errorf("verify: %w", err)
	}
	return &verified, answer.status, nil
}

type resetResponse struct {
	Token          string    `json:"token"`
	TokenExpiresAt time.Time `json:"token_expires_at"`
}

func (c *client) resetToken(token string) (*resetResponse, error) {
	answer, err := c.postJSON("runners/reset_authentication_token", token, map[string]string{"token": token}, "reset_token")
	if err != nil {
		return nil, err
	}
	if answer.status != http.StatusCreated {
		return nil, fmt.Errorf("reset token: status %d", answer.status)
	}
	var reset resetResponse
	if err := json.Unmarshal(answer.body, &reset); err != nil {
		return nil, err
	}
	return &reset, nil
}

func runnerInfo(executor string) map[string]any {
	return map[string]any{
		"name":         "gitlab-runner",
		"version":      version,
		"revision":     "standin",
		"platform":     "linux",
		"architecture": "amd64",
		"executor":     executor,
		"shell":        "bash",
		"features": map[string]bool{
			"variables": true, "raw_variables": true, "artifacts": true, "cache": true, "shared": true,
			"upload_multiple_artifacts": true, "upload_raw_artifacts": true, "session": false,
			"terminal": false, "refspecs": true, "masking": true, "proxy": false, "trace_reset": true,
			"trace_checksum": true, "trace_size": true, "cancelable": true, "return_exit_code": true,
		},
		"config": map[string]any{"gpus": ""},
	}
}
