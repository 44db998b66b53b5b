package main

import (
	"fmt"
	"net"
	"net/http"
	"sort"
	"strings"
	"sync"
)

// metrics serves the Prometheus series the real runner serves that gitlab-runners reads (its health
// check), with the same names and labels.
type metrics struct {
	mu       sync.Mutex
	counters map[string]float64
	gauges   map[string]float64
}

func newMetrics() *metrics {
	m := &metrics{counters: map[string]float64{}, gauges: map[string]float64{}}
	m.setGauge(fmt.Sprintf(`gitlab_runner_version_info{architecture="amd64",name="gitlab-runner",os="linux",version=%q}`, version), 1)
	m.add("gitlab_runner_configuration_loaded_total", 0)
	m.add("gitlab_runner_configuration_loading_error_total", 0)
	return m
}

func (m *metrics) add(series string, delta float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.counters[series] += delta
}

func (m *metrics) setGauge(series string, value float64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gauges[series] = value
}

func (m *metrics) apiStatus(runner, systemID, endpoint string, status int, method string) {
	m.add(fmt.Sprintf(`gitlab_runner_api_request_statuses_total{endpoint=%q,method=%q,runner=%q,status="%d",system_id=%q}`,
		endpoint, strings.ToLower(method), runner, status, systemID), 1)
}

func (m *metrics) render() string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var lines []string
	for series, value := range m.counters {
		lines = append(lines, fmt.Sprintf("%s %g", series, value))
	}
	for series, value := range m.gauges {
		lines = append(lines, fmt.Sprintf("%s %g", series, value))
	}
	sort.Strings(lines)
	return strings.Join(lines, "\n") + "\n"
}

// serve listens on address; an address it cannot bind is fatal, as it is for the real runner.
func (m *metrics) serve(address string) error {
	listener, err := net.Listen("tcp", address)
	if err != nil {
		return fmt.Errorf("listen_address %s: %w", address, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; version=0.0.4")
		_, _ = w.Write([]byte(m.render()))
	})
	go func() { _ = http.Serve(listener, mux) }()
	logf("INFO", "Metrics server listening address=%s", address)
	return nil
}
