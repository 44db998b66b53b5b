package main

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
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
	request, err := http.NewRequest(method, c.base+path, bytes.NewReader(body))
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
		if endpoint != "" && c.metrics != nil {
			c.metrics.apiStatus(shortToken(token), c.systemID, endpoint, -1, method)
		}
		return nil, err
	}
	defer answer.Body.Close()
	data, err := io.ReadAll(answer.Body)
	if err != nil {
		return nil, err
	}
	if endpoint != "" && c.metrics != nil {
		c.metrics.apiStatus(shortToken(token), c.systemID, endpoint, answer.StatusCode, method)
	}
	return &response{status: answer.StatusCode, header: answer.Header, body: data}, nil
}

func (c *client) postJSON(path string, token string, payload any, endpoint string) (*response, error) {
	return c.sendJSON(http.MethodPost, path, token, payload, endpoint)
}

// sendJSON sends a JSON body with the runner token also in the RUNNER-TOKEN header, as
// network.RunnerTokenHeader does.
func (c *client) sendJSON(method, path string, token string, payload any, endpoint string) (*response, error) {
	body, err := json.Marshal(payload)
	if err != nil {
		return nil, err
	}
	header := http.Header{"Content-Type": {"application/json"}, "Accept": {"application/json"}}
	if token != "" {
		header.Set("RUNNER-TOKEN", token)
	}
	return c.do(method, path, header, body, endpoint, token)
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
